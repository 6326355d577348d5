"""Helpers shared by the benchmarks: JSON-line output, timing, synthetic batches, matmul baseline."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models import masking
from flamingo_jax.training import flops


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


