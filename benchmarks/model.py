r"""Model benchmark: compile time, forward and forward+backward throughput, matmul efficiency.

  python benchmarks/model.py [--presets tiny,bench] [--steps 5]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}. The forward+backward step takes
gradients of the trainable tree only, as training does. Model FLOPs come from `flamingo_jax.flops`
(matmuls only); the same matmul shapes (forward, input-gradient and weight-gradient forms) are timed
alone in this process, under the same XLA flags, to give this machine's matmul throughput for the
step's own mix: `<preset>_fwd_bwd_matmul_fraction` = step model FLOP/s over that throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax import flops, masking  # noqa: E402
from flamingo_jax import params as P  # noqa: E402
from flamingo_jax.config import FlamingoConfig  # noqa: E402
from flamingo_jax.losses import next_token_loss  # noqa: E402
from flamingo_jax.model import Flamingo  # noqa: E402


def emit(metric: str, value: float, unit: str, **extra):
  print(json.dumps({"benchmark": "model", "metric": metric, "value": round(float(value), 4),
                    "unit": unit, **extra}), flush=True)


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


def bench_preset(name: str, steps: int):
  cfg = presets.get_config(name)
  config = FlamingoConfig.from_dict(cfg.model)
  d = cfg.data.datasets.interleaved
  batch = make_batch(config, d.batch_size, d.seq_len, d.max_images)
  model = Flamingo(config)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *batch)["params"])
  frozen, trainable = P.split(params)
  tokens = batch[0]
  labels = jnp.roll(tokens, -1, axis=1)
  mask = jnp.ones_like(tokens).at[:, -1].set(0)

  forward = jax.jit(lambda p, *b: model.apply({"params": p}, *b))

  def loss_fn(trainable, frozen, batch):
    logits = model.apply({"params": P.merge(frozen, trainable)}, *batch)
    return next_token_loss(logits, labels, mask)
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))

  start = time.perf_counter()
  forward_c = forward.lower(params, *batch).compile()
  emit(f"{name}_compile_fwd_s", time.perf_counter() - start, "s", preset=name)
  start = time.perf_counter()
  fwd_bwd_c = fwd_bwd.lower(trainable, frozen, batch).compile()
  emit(f"{name}_compile_fwd_bwd_s", time.perf_counter() - start, "s", preset=name)

  jax.block_until_ready(forward_c(params, *batch))
  jax.block_until_ready(fwd_bwd_c(trainable, frozen, batch))
  fwd_s = timed(forward_c, params, *batch, repeats=steps)
  step_s = timed(fwd_bwd_c, trainable, frozen, batch, repeats=steps)

  matmuls = flops.inventory(config, d.batch_size, d.seq_len, d.max_images)
  fwd_flops, step_flops = flops.forward_flops(matmuls), flops.train_step_flops(matmuls)
  emit(f"{name}_fwd_examples_per_s", d.batch_size / fwd_s, "examples/s", preset=name)
  emit(f"{name}_fwd_bwd_examples_per_s", d.batch_size / step_s, "examples/s", preset=name)
  emit(f"{name}_fwd_model_flops_per_s", fwd_flops / fwd_s / 1e9, "GFLOP/s", preset=name,
       flops_per_step=fwd_flops)
  emit(f"{name}_fwd_bwd_model_flops_per_s", step_flops / step_s / 1e9, "GFLOP/s", preset=name,
       flops_per_step=step_flops)
  fwd_mm = matmul_throughput([flops.MatMul(m.name, m.batch, m.m, m.k, m.n, 0) for m in matmuls],
                             repeats=steps)
  step_mm = matmul_throughput(matmuls, repeats=steps)
  emit(f"{name}_fwd_matmul_flops_per_s", fwd_mm / 1e9, "GFLOP/s", preset=name)
  emit(f"{name}_fwd_bwd_matmul_flops_per_s", step_mm / 1e9, "GFLOP/s", preset=name)
  emit(f"{name}_fwd_matmul_fraction", fwd_flops / fwd_s / fwd_mm, "ratio", preset=name)
  emit(f"{name}_fwd_bwd_matmul_fraction", step_flops / step_s / step_mm, "ratio", preset=name,
       target=0.6 if name == "bench" else None)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--presets", default="tiny,bench")
  parser.add_argument("--steps", type=int, default=5, help="Timed repetitions (median is reported).")
  args = parser.parse_args()
  emit("environment", 0, "info", device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
       jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""), machine=platform.machine())
  for name in args.presets.split(","):
    bench_preset(name, args.steps)


if __name__ == "__main__":
  main()
