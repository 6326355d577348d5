"""The optimiser of the trainable tree (FLAMINGO.md, Optimisation).

AdamW with global-norm clipping and a warm-up schedule; weight decay on everything trainable except
the Perceiver Resampler (`optimizer.name="sgd"`: plain SGD in place of AdamW). Wrapped in
`optax.apply_if_finite`: an update whose gradients are not finite (NaN / inf, which is what a
non-finite loss produces) is skipped and counted (`skipped_updates`). The frozen tree never reaches
the optimiser, so it has no optimiser state at all.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from flamingo_jax.config import OptimizerConfig
from flamingo_jax.weights.tree import Params


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then constant or cosine decay to
  `end_learning_rate` at `decay_steps`."""
  if config.schedule == "constant":
    if config.warmup_steps == 0:  # optax's warm-up schedules give 0 at step 0 even without warm-up.
      return optax.constant_schedule(config.learning_rate)
    return optax.warmup_constant_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                            config.decay_steps, config.end_learning_rate)


def decay_mask(trainable: Params) -> Any:
  """True where weight decay applies: every trainable leaf outside the resampler."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "resampler" not in jax.tree_util.keystr(path), trainable)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """`config.name`: AdamW, or plain SGD; clipped, on the schedule, non-finite updates skipped."""
  schedule = learning_rate_schedule(config)
  if config.name == "sgd":
    update = optax.sgd(schedule)
  else:
    update = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                         weight_decay=config.weight_decay, mask=decay_mask)
  return optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(config.clip_norm), update),
                               max_consecutive_errors=config.max_consecutive_skips)


def skipped_updates(opt_state) -> jax.Array:
  """How many updates `apply_if_finite` has skipped so far."""
  return opt_state.total_notfinite
