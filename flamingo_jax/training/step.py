"""One training update: dataset-weighted gradient accumulation, micro-batched, as one pure function.

Every update receives a batch from every dataset (the paper's recipe; round-robin passes one). For
each dataset d the gradient of lambda_d * loss_d is accumulated over `micro_batches` slices of its
batch with `lax.scan`, so activation memory is bounded by one micro-batch. The loss of a dataset is the
mean over all its loss tokens (the micro-batches share one token count, so the accumulated gradient is
exactly the full-batch gradient). The sum over datasets is applied in one optimiser update.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from flamingo_jax.training.optimizer import skipped_updates
from flamingo_jax.training.tasks import Task
from flamingo_jax.weights import tree as ptree

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []
  trainable: ptree.Params  # float32 trainable tree (resampler, gated blocks, new-token rows).
  opt_state: optax.OptState  # Optimiser state of the trainable tree only.
  rng: jax.Array  # uint32 [2] raw key data, advanced every step.


def _split_micro(batch: Batch, micro_batches: int) -> Batch:
  def split(x):
    if x.shape[0] % micro_batches:
      raise ValueError(f"A batch of {x.shape[0]} examples cannot be split into "
                       f"train.micro_batches={micro_batches} micro-batches.")
    return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])
  return jax.tree.map(split, dict(batch))


def make_train_step(task: Task, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_weights: Mapping[str, float], *,
                    micro_batches: int = 1) -> Callable[..., Any]:
  """Returns train_step(state, frozen, batches) -> (state, metrics).

  batches: {dataset: {"tokens", "labels", "loss_mask", "images", "phi", ...}} with per-dataset
  shapes; the datasets present decide which losses are accumulated (lambda from `loss_weights`).
  """

  def micro_loss(trainable, frozen, micro, total_weight):
    values, weights = task.losses(task.model, ptree.merge(frozen, trainable), micro)
    return jnp.sum(values * weights.astype(jnp.float32)) / total_weight

  grad_fn = jax.value_and_grad(micro_loss)

  def dataset_grads(trainable, frozen, batch):
    total_weight = task.total_weight(batch)
    micro = _split_micro(batch, micro_batches)

    def body(acc, m):
      loss, grads = grad_fn(trainable, frozen, m, total_weight)
      return jax.tree.map(jnp.add, acc, (loss, grads)), None
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
    (loss, grads), _ = jax.lax.scan(body, zeros, micro)
    return loss, grads

  def train_step(state: TrainState, frozen: ptree.Params, batches: Mapping[str, Batch]):
    grads = jax.tree.map(jnp.zeros_like, state.trainable)
    metrics = {}
    total = jnp.zeros((), jnp.float32)
    for name in sorted(batches):
      loss, g = dataset_grads(state.trainable, frozen, batches[name])
      weight = loss_weights[name]
      grads = jax.tree.map(lambda acc, x: acc + weight * x, grads, g)
      total += weight * loss
      metrics[f"loss/{name}"] = loss
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics.update({
        "loss": total,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
        "skipped_updates": skipped_updates(opt_state),
        **task.metrics(trainable),
    })
    rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
    return TrainState(state.step + 1, trainable, opt_state, rng), metrics

  return train_step
