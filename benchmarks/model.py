r"""Model benchmark: compile time, forward and forward+backward throughput, matmul efficiency.

  python benchmarks/model.py [--presets tiny,bench] [--steps 5]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}. The forward+backward step takes
gradients of the trainable tree only, as training does. Model FLOPs come from `flamingo_jax.training.flops`
(matmuls only); the same matmul shapes (forward, input-gradient and weight-gradient forms) are timed
alone in this process, under the same XLA flags, to give this machine's matmul throughput for the
step's own mix: `<preset>_fwd_bwd_matmul_fraction` = step model FLOP/s over that throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment, make_batch, matmul_throughput, timed  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from flamingo_jax.models.flamingo import Flamingo  # noqa: E402
from flamingo_jax.training import flops  # noqa: E402
from flamingo_jax.training.losses import next_token_loss  # noqa: E402
from flamingo_jax.weights import tree as ptree  # noqa: E402


def bench_preset(name: str, steps: int):
  cfg = Config.from_dict(presets.get_config(name))
  config = cfg.model
  d = cfg.data.datasets["interleaved"]
  batch = make_batch(config, d.batch_size, d.seq_len, d.max_images)
  model = Flamingo(config)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *batch)["params"])
  frozen, trainable = ptree.split(params)
  tokens = batch[0]
  labels = jnp.roll(tokens, -1, axis=1)
  mask = jnp.ones_like(tokens).at[:, -1].set(0)

  forward = jax.jit(lambda p, *b: model.apply({"params": p}, *b))

  def loss_fn(trainable, frozen, batch):
    logits = model.apply({"params": ptree.merge(frozen, trainable)}, *batch)
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


emit = emitter("model")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--presets", default="tiny,bench")
  parser.add_argument("--steps", type=int, default=5, help="Timed repetitions (median is reported).")
  args = parser.parse_args()
  environment(emit)
  for name in args.presets.split(","):
    bench_preset(name, args.steps)


if __name__ == "__main__":
  main()
