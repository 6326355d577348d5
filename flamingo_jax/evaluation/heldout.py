"""Held-out loss of a trained Flamingo run: the latest checkpoint in a workdir on the eval shards.

  losses = heldout_losses(workdir, num_batches=4)   # {dataset: mean next-token loss}

The run is rebuilt from its own record (`weights.pretrained.load_trained`). Every dataset of its
`config.data` is scored, including those `data.exclude` left out of training (the
no-interleaved-data ablation is judged on interleaved text too). Evaluation streams are unshuffled,
so every run of a sweep is scored on the same tokens.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import mixture as mixture_lib
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.training.losses import next_token_loss
from flamingo_jax.weights.pretrained import load_trained


@functools.lru_cache(maxsize=None)
def _forward(model_config: FlamingoConfig):
  """jit(Flamingo.apply), compiled once per model config (sweep runs often share one)."""
  return jax.jit(Flamingo(model_config).apply)


def heldout_losses(workdir: str, num_batches: int) -> dict[str, float]:
  """{dataset: mean over `num_batches` held-out batches of the next-token loss} of the flamingo-task
  run in `workdir` (its latest checkpoint)."""
  config, params = load_trained(workdir)
  apply = _forward(config.model)
  every_dataset = config.replace({"data.exclude": "", "data.accumulation": "all"})
  mixture = mixture_lib.from_config(every_dataset, split="eval")

  def loss(batch):
    logits = apply({"params": params}, batch["tokens"], batch["images"], batch["phi"])
    return float(next_token_loss(logits, batch["labels"], batch["loss_mask"]))

  return {name: float(value) for name, value in mean_losses(mixture, num_batches, loss).items()}


def mean_losses(mixture, num_batches: int, losses: Callable[[dict], Any]) -> dict[str, np.ndarray]:
  """{dataset: mean over `num_batches` batches of `mixture` (an iterator of {dataset: numpy batch})
  of `losses(batch)`} (a float, or a tuple of floats averaged element-wise); batches as jnp arrays."""
  totals: dict[str, list] = {}
  for _ in range(num_batches):
    for name, batch in next(mixture).items():
      totals.setdefault(name, []).append(losses({k: jnp.asarray(v) for k, v in batch.items()}))
  return {name: np.mean(values, axis=0) for name, values in totals.items()}
