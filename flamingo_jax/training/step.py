"""One training update: dataset-weighted gradient accumulation, micro-batched, as one pure function.

Every update receives a batch from every dataset (the paper's recipe; round-robin passes one) and
applies the gradient of sum_d lambda_d * loss_d in one optimiser update, where loss_d is the mean over
all of dataset d's loss tokens. Each dataset's batch is split into `micro_batches` slices, scanned
with `lax.scan`, so activation memory is bounded by one micro-batch; the micro-batches share one
token count per dataset, so the accumulated gradient is exactly the full-batch gradient.

`lm_pass` (train.lm_pass) says how the datasets meet the LM:
  joint        one forward and backward per micro-batch over every dataset's rows together (rows
               packed to one length; Task.joint_losses): each token's loss is weighted
               lambda_d / (loss tokens of d), so the frozen LM is read once per micro-batch;
  per_dataset  one forward and backward per dataset and micro-batch (the paper's accumulation).
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


def _accumulate(grad_fn, trainable, micro) -> tuple[Any, Any]:
  """Sums grad_fn(trainable, m) -> (value, grads) (any pytrees) over the leading micro-batch axis
  of `micro` with lax.scan."""
  def body(acc, m):
    out = grad_fn(trainable, m)
    return jax.tree.map(jnp.add, acc, out), None
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, trainable,
                                                      jax.tree.map(lambda x: x[0], micro)))
  return jax.lax.scan(body, zeros, micro)[0]


def make_grads_fn(task: Task, loss_weights: Mapping[str, float], *, micro_batches: int = 1,
                  lm_pass: str = "per_dataset", batch_shards: int = 1) -> Callable[..., Any]:
  """Returns grads(trainable, frozen, batches) -> ((sum_d lambda_d loss_d, {dataset: loss_d}),
  gradient of the first w.r.t. trainable), accumulated over micro-batches as `lm_pass` says.

  batches: {dataset: {"tokens", "labels", "loss_mask", "images", "phi", ...}} with per-dataset
  shapes; the datasets present decide which losses are accumulated (lambda from `loss_weights`).
  batch_shards: the devices the batch is split over (mesh data x fsdp); the joint pass keeps each
  device's rows on it (models.flamingo.join_rows), so every dataset's rows per micro-batch must
  divide by it (`setup.check_batch_split`).
  """

  def joint_grads(trainable, frozen, batches):
    names = sorted(batches)
    totals = {name: task.total_weight(batches[name]) for name in names}

    def loss(trainable, micro):  # -> (sum_d lambda_d * loss_d, {d: loss_d}) of this micro-batch.
      params = ptree.merge(frozen, trainable)
      per_dataset = task.joint_losses(task.model, params, [micro[n] for n in names], batch_shards)
      losses = {name: jnp.sum(v * w.astype(jnp.float32)) / totals[name]
                for name, (v, w) in zip(names, per_dataset)}
      return sum(loss_weights[name] * losses[name] for name in names), losses
    micro = {name: _split_micro(batches[name], micro_batches) for name in names}
    return _accumulate(jax.value_and_grad(loss, has_aux=True), trainable, micro)

  def per_dataset_grads(trainable, frozen, batches):
    total, losses = jnp.zeros((), jnp.float32), {}
    grads = jax.tree.map(jnp.zeros_like, trainable)
    for name in sorted(batches):
      total_weight = task.total_weight(batches[name])

      def loss(trainable, micro):  # loss_d's share of this micro-batch (lambda applied after).
        values, weights = task.losses(task.model, ptree.merge(frozen, trainable), micro)
        return jnp.sum(values * weights.astype(jnp.float32)) / total_weight
      losses[name], g = _accumulate(jax.value_and_grad(loss), trainable,
                                    _split_micro(batches[name], micro_batches))
      weight = loss_weights[name]
      grads = jax.tree.map(lambda acc, x: acc + weight * x, grads, g)
      total += weight * losses[name]
    return (total, losses), grads

  if lm_pass == "joint" and task.joint_losses is None:
    raise ValueError("train.lm_pass=joint needs task=flamingo; use train.lm_pass=per_dataset.")
  return joint_grads if lm_pass == "joint" else per_dataset_grads


def make_train_step(task: Task, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_weights: Mapping[str, float],
                    **grad_options) -> Callable[..., Any]:
  """Returns train_step(state, frozen, batches) -> (state, metrics): the gradient of
  `make_grads_fn(task, loss_weights, **grad_options)` applied in one optimiser update."""
  dataset_grads = make_grads_fn(task, loss_weights, **grad_options)

  def train_step(state: TrainState, frozen: ptree.Params, batches: Mapping[str, Batch]):
    (total, losses), grads = dataset_grads(state.trainable, frozen, batches)
    metrics = {f"loss/{name}": loss for name, loss in losses.items()}
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
