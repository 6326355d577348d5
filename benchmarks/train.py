r"""Train-step benchmark: throughput, MFU and peak memory of the `bench` preset's full update.

  python benchmarks/train.py [--remat none] [--steps 5]

The step is the trainer's own (`flamingo_jax.training.step`): dataset-weighted accumulation, clipping,
AdamW with the non-finite guard, frozen params in `train.frozen_dtype`. Prints JSON lines:
  bench_train_examples_per_s, bench_train_tokens_per_s
  bench_mfu: model FLOP/s (matmuls the step needs, `flamingo_jax.training.flops`) over this machine's matmul
      FLOP/s measured in this process at the step's own shapes (target >= 0.6);
  bench_peak_mem_bytes: XLA's peak for the compiled step (arguments + outputs - donated + temporaries);
  bench_model_mem_bytes: params + optimiser state + the activations the remat policy keeps (the
      residuals `jax.vjp` saves, inputs excluded);
  bench_peak_mem_over_model: their ratio (target <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # Public only as print_saved_residuals.

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment, make_batch, matmul_throughput  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from flamingo_jax.models.flamingo import Flamingo  # noqa: E402
from flamingo_jax.training import flops  # noqa: E402
from flamingo_jax.training.losses import token_losses  # noqa: E402
from flamingo_jax.training.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from flamingo_jax.training.step import TrainState, make_train_step  # noqa: E402
from flamingo_jax.training.tasks import make_task  # noqa: E402
from flamingo_jax.weights import tree as ptree  # noqa: E402

emit = emitter("train")


def nbytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--remat", default=None, help="Override model.execution.remat_policy.")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  environment(emit)

  cfg = Config.from_dict(presets.get_config(args.preset))
  if args.remat:
    cfg = cfg.replace({"model.execution.remat_policy": args.remat})
  config = cfg.model
  name = args.preset
  model = Flamingo(config)
  batches = {}
  for dataset, d in cfg.data.datasets.items():
    tokens, images, phi = make_batch(config, d.batch_size, d.seq_len, d.max_images)
    batches[dataset] = {"tokens": tokens, "images": images, "phi": phi,
                        "labels": jnp.roll(tokens, -1, axis=1),
                        "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
  first = next(iter(batches.values()))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), first["tokens"], first["images"],
                                             first["phi"])["params"])
  frozen, trainable = ptree.split(params)
  frozen = jax.tree.map(lambda x: x.astype(cfg.train.frozen_dtype), frozen)
  optimizer = make_optimizer(cfg.optimizer)
  state = TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable),
                     jax.random.key_data(jax.random.key(1)))
  weights = {k: v.loss_weight for k, v in cfg.data.datasets.items()}
  step = jax.jit(make_train_step(make_task("flamingo", config), optimizer,
                                 learning_rate_schedule(cfg.optimizer), weights,
                                 micro_batches=cfg.train.micro_batches), donate_argnums=(0,))
  compiled = step.lower(state, frozen, batches).compile()
  times = []
  for _ in range(args.steps + 1):  # The first run warms up.
    start = time.perf_counter()
    state, _ = compiled(state, frozen, batches)  # The state is donated: carry the new one.
    jax.block_until_ready(state)
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
  emit(f"{name}_mfu", step_flops / seconds / baseline, "ratio", target=0.6, **extra)

  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)

  def loss(trainable, frozen, batch):
    logits = model.apply({"params": ptree.merge(frozen, trainable)}, batch["tokens"], batch["images"],
                         batch["phi"])
    return jnp.mean(token_losses(logits, batch["labels"], 0.0))
  kept = 0
  for batch in batches.values():
    residuals = saved_residuals(loss, trainable, frozen, batch)
    kept = max(kept, sum(aval.size * aval.dtype.itemsize for aval, why in residuals
                         if not why.startswith("from the argument")))
  model_bytes = nbytes(frozen) + nbytes(trainable) + nbytes(state.opt_state) + kept
  emit(f"{name}_peak_mem_bytes", peak, "bytes", **extra)
  emit(f"{name}_model_mem_bytes", model_bytes, "bytes", params=nbytes(frozen) + nbytes(trainable),
       opt_state=nbytes(state.opt_state), kept_activations=kept, **extra)
  emit(f"{name}_peak_mem_over_model", peak / model_bytes, "ratio", target=1.3, **extra)


if __name__ == "__main__":
  main()
