"""The `tiny` preset trimmed for training tests: one or two small synthetic datasets, quick steps.

  get_config("one")  one interleaved dataset;  get_config("two")  interleaved + pairs;
  get_config("packed")  interleaved + pairs + video packed to one row length, one LM pass.
  (a config file: `--config tests/configs/train_small.py:two`)
  config("two", **{"train.num_steps": 2})  the same as a checked Config, with flat overrides.
"""

import ml_collections

from experiments import flamingo
from flamingo_jax.config import Config


def get_config(arg: str = "one") -> ml_collections.ConfigDict:
  config = flamingo.get_config("tiny")
  datasets = {"interleaved": dict(batch_size=8, seq_len=16, max_images=2, num_frames=1,
                                  loss_weight=1.0)}
  if arg == "two":
    datasets["pairs"] = dict(batch_size=8, seq_len=9, max_images=1, num_frames=1, loss_weight=0.2)
  if arg == "packed":  # Pairs and clips packed 2 to a row of the documents' 16 tokens: one LM pass.
    datasets["pairs"] = dict(batch_size=16, seq_len=8, max_images=1, num_frames=1,
                             loss_weight=0.2, pack=2)
    datasets["video"] = dict(batch_size=16, seq_len=8, max_images=1, num_frames=2,
                             loss_weight=0.03, pack=2)
    config.train.lm_pass = "joint"
  config.data.datasets = datasets
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.optimizer.warmup_steps = 2
  return config


def config(arg: str = "one", **overrides) -> Config:
  return Config.from_dict(get_config(arg)).replace(overrides)
