"""The `tiny` preset trimmed for training tests: small synthetic or demo datasets, quick steps.

  get_config("one")  one interleaved dataset;  get_config("two")  interleaved + pairs;
  get_config("packed")  interleaved + pairs + video packed to one row length, one LM pass.
  get_config("packed,corpus=DIR")  the same datasets read by grain from the demo corpus's shards in
  DIR (`data_pipelines.demo.build(DIR)`) in place of the synthetic stream.
  (a config file: `--config tests/configs/train_small.py:two`)
  config("two", **{"train.num_steps": 2})  the same as a checked Config, with flat overrides.
"""

import ml_collections

from experiments import flamingo
from flamingo_jax.config import Config
from flamingo_jax.config.args import parse_arg

DEMO_FIELDS = ("kind", "path", "eval_path", "p_next", "random_flip")  # Taken from the demo corpus.


def get_config(arg: str = "one") -> ml_collections.ConfigDict:
  args = parse_arg(arg, corpus="")
  preset, corpus = args["preset"], args["corpus"]
  config = flamingo.get_config("tiny")
  datasets = {"interleaved": dict(batch_size=8, seq_len=16, max_images=2, num_frames=1,
                                  loss_weight=1.0)}
  if preset == "two":
    datasets["pairs"] = dict(batch_size=8, seq_len=9, max_images=1, num_frames=1, loss_weight=0.2)
  if preset == "packed":  # Pairs and clips packed 2 to a row of the documents' 16 tokens: one LM pass.
    datasets["pairs"] = dict(batch_size=16, seq_len=8, max_images=1, num_frames=1,
                             loss_weight=0.2, pack=2)
    datasets["video"] = dict(batch_size=16, seq_len=8, max_images=1, num_frames=2,
                             loss_weight=0.03, pack=2)
    config.train.lm_pass = "joint"
  if corpus:
    demo = flamingo.demo_data(corpus)
    config.data.update(source=demo["source"], tokenizer=demo["tokenizer"])
    for name, spec in datasets.items():
      spec.update({field: demo["datasets"][name][field] for field in DEMO_FIELDS})
  config.data.datasets = datasets
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.optimizer.warmup_steps = 2
  return config


def config(arg: str = "one", **overrides) -> Config:
  return Config.from_dict(get_config(arg)).replace(overrides)
