"""Helpers shared by the benchmarks: JSON-line output, timing, synthetic batches, the trainer's step
on them, matmul baseline, peak RSS."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.training import flops
from flamingo_jax.training.optimizer import learning_rate_schedule, make_optimizer
from flamingo_jax.training.step import TrainState, make_train_step
from flamingo_jax.training.tasks import make_task
from flamingo_jax.training.train import release_freed_host_memory
from flamingo_jax.weights import tree as ptree


def emitter(benchmark: str):
  """emit(metric, value, unit, **extra) printing one JSON line for `benchmark`."""
  def emit(metric: str, value: float, unit: str, **extra):
    print(json.dumps({"benchmark": benchmark, "metric": metric, "value": round(float(value), 4),
                      "unit": unit, **extra}), flush=True)
  return emit


def environment(emit) -> None:
  emit("environment", 0, "info", device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
       jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""), machine=platform.machine())


def timed(fn, *args, repeats: int) -> float:
  """Median seconds of `fn(*args)` (already compiled) over `repeats` runs."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def make_batch(config: FlamingoConfig, batch: int, seq_len: int, num_images: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.lm.vocab_size, (batch, seq_len))
  gap = seq_len // num_images
  tokens[:, [i * gap + 1 for i in range(num_images)]] = config.image_token_id
  tokens = jnp.asarray(tokens, jnp.int32)
  size = config.vision.image_size
  images = jnp.asarray(rng.integers(0, 256, (batch, num_images, 1, size, size, 3), dtype=np.uint8))
  return tokens, images, masking.media_index(tokens, config.image_token_id)


def matmul_throughput(matmuls: list[flops.MatMul], repeats: int) -> float:
  """FLOP/s of this machine on the step's matmuls: each distinct shape and gradient form timed alone,
  weighted by how often the step runs it."""
  forms: dict[tuple, float] = {}  # (form, batch, m, k, n) -> FLOPs the step spends on it.
  for mm in matmuls:
    forms[("fwd", mm.batch, mm.m, mm.k, mm.n)] = forms.get(("fwd", mm.batch, mm.m, mm.k, mm.n), 0) + mm.flops
    for form in ("dx", "dw")[:mm.backward]:
      forms[(form, mm.batch, mm.m, mm.k, mm.n)] = forms.get((form, mm.batch, mm.m, mm.k, mm.n), 0) + mm.flops
  total_flops, total_seconds = 0.0, 0.0
  rng = np.random.default_rng(0)
  for (form, b, m, k, n), step_flops in forms.items():
    # dx: dY[m, n] . W[k, n]^T -> [m, k];  dw: X[m, k]^T . dY[m, n] -> [k, n] (contract over m).
    lhs_shape, rhs_shape, dims = {
        "fwd": ((b, m, k), (b, k, n), (((2,), (1,)), ((0,), (0,)))),
        "dx": ((b, m, n), (b, k, n), (((2,), (2,)), ((0,), (0,)))),
        "dw": ((b, m, k), (b, m, n), (((1,), (1,)), ((0,), (0,)))),
    }[form]
    lhs = jnp.asarray(rng.normal(size=lhs_shape), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=rhs_shape), jnp.float32)
    fn = jax.jit(lambda a, c, dims=dims: jax.lax.dot_general(a, c, dims))
    jax.block_until_ready(fn(lhs, rhs))
    seconds = timed(fn, lhs, rhs, repeats=repeats)
    total_flops += step_flops
    total_seconds += seconds * step_flops / (2 * b * m * k * n)
  return total_flops / total_seconds


def peak_rss_bytes() -> int:
  """This process's peak resident set (VmHWM in /proc/self/status), in bytes."""
  with open("/proc/self/status", encoding="ascii") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("/proc/self/status has no VmHWM line: peak RSS needs Linux.")


def synthetic_batches(cfg: Config) -> dict[str, dict[str, jax.Array]]:
  """{dataset: batch} of random tokens and images at each of cfg.data.datasets' shapes."""
  batches = {}
  for dataset, d in cfg.data.datasets.items():
    tokens, images, phi = make_batch(cfg.model, d.batch_size, d.seq_len, d.max_images)
    batches[dataset] = {"tokens": tokens, "images": images, "phi": phi,
                        "labels": jnp.roll(tokens, -1, axis=1),
                        "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
  return batches


class TrainerStep:
  """The trainer's own update (`training.step.make_train_step`: dataset-weighted accumulation,
  clipping, AdamW with the non-finite guard, frozen params in train.frozen_dtype) compiled for
  `cfg` on synthetic batches; `run()` does one update (the state is donated and carried)."""

  def __init__(self, cfg: Config):
    self.cfg, self.model = cfg, Flamingo(cfg.model)
    self.batches = synthetic_batches(cfg)
    first = next(iter(self.batches.values()))
    params = nn.meta.unbox(jax.jit(self.model.init)(jax.random.key(0), first["tokens"],
                                                    first["images"], first["phi"])["params"])
    frozen, trainable = ptree.split(params)
    self.frozen = jax.tree.map(lambda x: x.astype(cfg.train.frozen_dtype), frozen)
    optimizer = make_optimizer(cfg.optimizer)
    self.state = TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable),
                            jax.random.key_data(jax.random.key(1)))
    weights = {k: v.loss_weight for k, v in cfg.data.datasets.items()}
    self.task = make_task("flamingo", cfg.model)
    step = jax.jit(make_train_step(self.task, optimizer,
                                   learning_rate_schedule(cfg.optimizer), weights,
                                   micro_batches=cfg.train.micro_batches,
                                   lm_pass=cfg.train.lm_pass), donate_argnums=(0,))
    self.compiled = step.lower(self.state, self.frozen, self.batches).compile()
    release_freed_host_memory()  # As the trainer does after its first (compiling) update.

  def run(self) -> None:
    self.state, _ = self.compiled(self.state, self.frozen, self.batches)
    jax.block_until_ready(self.state)

  def loss(self, trainable, batch) -> jax.Array:
    """The task's own mean token loss of one dataset's batch (execution.loss_chunk included)."""
    values, weights = self.task.losses(self.model, ptree.merge(self.frozen, trainable), batch)
    return jnp.sum(values * weights) / jnp.sum(weights)
