"""What the training loop needs, built from the config before any array exists: the mesh, the task,
its parameters split and sharded, the optimiser, the abstract train state, and the jitted update."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax import sharding
from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.config.schema import fail
from flamingo_jax.training.optimizer import learning_rate_schedule, make_optimizer
from flamingo_jax.training.step import TrainState, make_train_step
from flamingo_jax.training.tasks import Task, make_task
from flamingo_jax.weights.pretrained import ModelParts


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from the config (no arrays allocated yet)."""

  mesh: jax.sharding.Mesh
  model_config: FlamingoConfig
  task: Task
  parts: ModelParts  # The task's model split into frozen / trainable trees, with their shardings.
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings, for restore.
  abstract_frozen: Any  # ShapeDtypeStructs of the frozen tree (train.frozen_dtype, sharded).
  batch_sharding: jax.sharding.NamedSharding
  optimizer: Any


def check_batch_split(config: Config, mesh: jax.sharding.Mesh) -> None:
  """Every dataset's rows (per micro-batch for the joint pass, which joins them device by device)
  must split evenly over the batch's devices; the error names the fields to change."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = config.train.micro_batches if config.train.lm_pass == "joint" else 1
  for name, spec in config.data.selected().items():
    rows = spec.batch_size // spec.pack // micro
    if rows % shards:
      fail(f"data.datasets.{name}.batch_size", spec.batch_size,
           f"gives {rows} rows (batch_size / pack={spec.pack}"
           + (f" / train.micro_batches={micro}" if micro > 1 else "")
           + f") that cannot be split over mesh.data x mesh.fsdp = {shards} devices: change the "
           "batch size, pack, micro-batches or the mesh.")


def build_setup(config: Config, devices=None) -> Setup:
  m = config.mesh
  mesh = sharding.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
  check_batch_split(config, mesh)
  model_config = config.model
  task = make_task(config.task, model_config, z_loss=config.train.z_loss,
                   freeze_lm=config.train.freeze_lm)
  parts = ModelParts(task.model, task.init_inputs, task.trainable_if, mesh, config.mesh.frozen)
  optimizer = make_optimizer(config.optimizer)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  opt_state_boxed = jax.eval_shape(optimizer.init, parts.boxed[1])  # Boxes carry the partitioning.
  state_shardings = TrainState(
      step=replicated, trainable=parts.trainable_shardings,
      opt_state=sharding.shardings(opt_state_boxed, mesh), rng=replicated)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), trainable=nn.meta.unbox(parts.boxed[1]),
                 opt_state=nn.meta.unbox(opt_state_boxed),
                 rng=jax.ShapeDtypeStruct((2,), jnp.uint32)),
      state_shardings)
  return Setup(mesh, model_config, task, parts, state_shardings, abstract_state,
               parts.abstract_frozen(config.train.frozen_dtype),
               jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))), optimizer)


def jit_train_step(config: Config, setup: Setup,
                   loss_weights: dict[str, float]):
  """The trainer's update, jitted on the setup's shardings (state donated): called by the loop, and
  lowered for a target topology by `training.aot`."""
  return jax.jit(
      make_train_step(setup.task, setup.optimizer, learning_rate_schedule(config.optimizer),
                      loss_weights, micro_batches=config.train.micro_batches,
                      lm_pass=config.train.lm_pass,
                      batch_shards=setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]),
      in_shardings=(setup.state_shardings, setup.parts.frozen_shardings, setup.batch_sharding),
      out_shardings=(setup.state_shardings, jax.sharding.NamedSharding(setup.mesh, jax.P())),
      donate_argnums=(0,))
