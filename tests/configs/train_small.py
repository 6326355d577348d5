"""The `tiny` preset trimmed for training tests: one or two small synthetic datasets, quick steps.

  get_config("one")  one interleaved dataset;  get_config("two")  interleaved + pairs.
"""

from experiments import flamingo


def get_config(arg: str = "one"):
  config = flamingo.get_config("tiny")
  datasets = {"interleaved": dict(batch_size=8, seq_len=16, max_images=2, num_frames=1,
                                  loss_weight=1.0)}
  if arg == "two":
    datasets["pairs"] = dict(batch_size=8, seq_len=9, max_images=1, num_frames=1, loss_weight=0.2)
  config.data.datasets = datasets
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.optimizer.warmup_steps = 2
  return config
