r"""Train-step benchmark: throughput, MFU and peak memory of the `bench` preset's full update.

  python benchmarks/train.py [--remat none] [--steps 5]

The step is the trainer's own (`benchmarks.common.TrainerStep`: dataset-weighted accumulation,
clipping, AdamW with the non-finite guard, frozen params in `train.frozen_dtype`). Prints JSON lines:
  bench_train_examples_per_s, bench_train_tokens_per_s, bench_train_model_flops_per_s: model FLOPs
      (the matmuls the step needs, `flamingo_jax.training.flops`) per second;
  bench_mfu_nominal: model FLOP/s over the host's nominal f32 peak (cores x FLOP per cycle x clock,
      `training.metrics.nominal_cpu_flops`; the derivation is printed with it);
  bench_matmul_efficiency: model FLOP/s over this process's own matmul FLOP/s, measured at the
      step's shapes (target >= 0.8): the step's overheads beyond its matmuls, not hardware use;
  bench_peak_mem_bytes: XLA's peak for the compiled step (arguments + outputs - donated + temporaries);
  bench_model_mem_bytes: params + optimiser state + the activations the remat policy keeps (the
      residuals `jax.vjp` saves for the gradient with respect to the trainable tree, inputs excluded);
  bench_peak_mem_over_model: their ratio (target <= 1.3);
  bench_peak_rss_bytes: the whole process's peak resident set (VmHWM), compiles included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # Public only as print_saved_residuals.

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import (TrainerStep, emitter, environment, matmul_throughput,  # noqa: E402
                               peak_rss_bytes)
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from flamingo_jax.training import flops, xla_flags  # noqa: E402
from flamingo_jax.training.metrics import nominal_cpu_flops  # noqa: E402

emit = emitter("train")


def nbytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--remat", default=None, help="Override model.execution.remat_policy.")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  xla_flags.set_cpu_flags()  # As the trainer does (--cpu_flags), before JAX starts its backend.
  environment(emit)

  cfg = Config.from_dict(presets.get_config(args.preset))
  if args.remat:
    cfg = cfg.replace({"model.execution.remat_policy": args.remat})
  config = cfg.model
  name = args.preset
  trainer = TrainerStep(cfg)
  times = []
  for _ in range(args.steps + 1):  # The first run warms up.
    start = time.perf_counter()
    trainer.run()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times[1:])

  matmuls = []
  for d in cfg.data.datasets.values():
    matmuls += flops.inventory(config, d.batch_size, d.seq_len, d.max_images, d.num_frames)
  step_flops = flops.train_step_flops(matmuls)
  baseline = matmul_throughput(matmuls, repeats=args.steps)
  examples = sum(d.batch_size for d in cfg.data.datasets.values())
  tokens = sum(d.batch_size * d.seq_len for d in cfg.data.datasets.values())
  extra = dict(preset=name, remat=config.execution.remat_policy)
  emit(f"{name}_train_step_s", seconds, "s", **extra)
  emit(f"{name}_train_examples_per_s", examples / seconds, "examples/s", **extra)
  emit(f"{name}_train_tokens_per_s", tokens / seconds, "tokens/s", **extra)
  emit(f"{name}_train_model_flops_per_s", step_flops / seconds / 1e9, "GFLOP/s", **extra)
  emit(f"{name}_matmul_flops_per_s", baseline / 1e9, "GFLOP/s", **extra)
  peak_flops, derivation = nominal_cpu_flops()
  emit(f"{name}_mfu_nominal", step_flops / seconds / peak_flops, "ratio",
       peak_gflops=peak_flops / 1e9, peak=derivation, **extra)
  emit(f"{name}_matmul_efficiency", step_flops / seconds / baseline, "ratio", target=0.8, **extra)

  memory = trainer.compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)

  kept = 0
  trainable, frozen = trainer.state.trainable, trainer.frozen
  for batch in trainer.batches.values():
    residuals = saved_residuals(lambda t, batch=batch: trainer.loss(t, batch), trainable)
    kept = max(kept, sum(aval.size * aval.dtype.itemsize for aval, why in residuals  # Activations:
                         if not why.startswith(("from the argument", "from a constant"))))
  model_bytes = nbytes(frozen) + nbytes(trainable) + nbytes(trainer.state.opt_state) + kept
  emit(f"{name}_peak_mem_bytes", peak, "bytes", **extra)
  emit(f"{name}_model_mem_bytes", model_bytes, "bytes", params=nbytes(frozen) + nbytes(trainable),
       opt_state=nbytes(trainer.state.opt_state), kept_activations=kept, **extra)
  emit(f"{name}_peak_mem_over_model", peak / model_bytes, "ratio", target=1.3, **extra)
  emit(f"{name}_peak_rss_bytes", peak_rss_bytes(), "bytes", **extra)


if __name__ == "__main__":
  main()
