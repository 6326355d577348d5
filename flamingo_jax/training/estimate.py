"""Calibrated step-time estimate of a config on a TPU slice, from reduced-depth unrolled compiles.

`estimate(config, topology)` compiles the trainer's real step (`setup.jit_train_step`) for the slice's
compile-only devices at a few reduced depths with the layers unrolled (`reduced_depths`: LM layers
in whole units of `xattn.every` for task=flamingo, so the gated-block pattern is kept; and vision
layers), costs each compile per chip (`program_cost`: XLA's cost analysis, the loops' further trips,
Pallas kernels, and the collectives over the ICI) and extrapolates to full depth
(`cost_model.fit`). It reports compute-only and compute + exposed communication step time, MFU and
tokens/s per chip.

XLA flags: the estimate compiles with the trainer's own (`xla_flags.TPU_FLAGS`, set by
`aot.topology_devices` as the trainer sets them: async collective fusion, overlapped all-gathers and
data-parallel all-reduces), and nothing else: windowed einsum stays at libtpu's default, as in the
run, and the loops it creates are counted by their trip counts read from the HLO, not assumed.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.training import aot, collectives, cost_model, flops, hlo_loops
from flamingo_jax.training.setup import build_setup, jit_train_step

METHOD = ("reduced-depth unrolled compiles (XLA cost analysis + loop trips from the HLO + analytic "
          "Pallas kernels), fitted linearly in depth; ICI ring time of the HLO's collectives; "
          "exposed = max(0, async comm - compute) + sync comm, per layer and for the rest")


def full_depth(config: Config) -> tuple[int, ...]:
  """The depth variables of `config`: (LM layers,) for task=lm, (LM layers, vision layers) else."""
  m = config.model
  return (m.lm.num_layers,) if config.task == "lm" else (m.lm.num_layers, m.vision.num_layers)


def reduced_depths(config: Config, count: int = 3) -> list[tuple[int, ...]]:
  """`count` small depths that vary every depth variable: LM layers in units of xattn.every
  (task=flamingo) or 1 (task=lm): 1, 2, 3 units; vision layers 1 or 2."""
  unit = config.model.xattn.every if config.task == "flamingo" else 1
  if config.task == "lm":
    return [(unit * (i + 1),) for i in range(count)]
  return [(unit, 1), (2 * unit, 1), (unit, 2)][:max(count, 3)]


def reduced_config(config: Config, depth: tuple[int, ...]) -> Config:
  overrides = {"model.execution.scan_layers": False, "model.lm.num_layers": depth[0]}
  if len(depth) > 1:
    overrides["model.vision.num_layers"] = depth[1]
  return config.replace(overrides)


def interconnect(topology: aot.Topology, mesh: jax.sharding.Mesh) -> collectives.Interconnect:
  """The slice's links, with the chips in the executable's device order (the mesh's)."""
  chip = topology.chip
  return collectives.Interconnect(
      tuple(tuple(d.coords) for d in mesh.devices.flat), topology.shape,
      tuple(chip.wraparound(topology.shape)), chip.ici_link_bytes_per_s)


def kernel_seconds(task, model_config, batches, packs, chip: aot.Chip, chips: int) -> float:
  """Per chip: analytic time of the attention products a Pallas kernel runs (their forward and
  backward FLOPs at peak, or reading q, k, v and writing the output at HBM bandwidth)."""
  matmuls = [m for m in task.step_matmuls(model_config, batches, 1, packs)
             if ".attn." in m.name and (m.name.startswith("lm.") or m.name.startswith("vision."))]
  flop = sum(m.flops * (1 + m.backward) for m in matmuls if m.name.endswith("scores")) * 2
  hbm = sum(2 * m.batch * (2 * m.m * m.k + 2 * m.n * m.k) * (1 + m.backward)
            for m in matmuls if m.name.endswith("scores"))
  return max(flop / chip.peak_flops, hbm / chip.hbm_bytes_per_s) / chips


def program_cost(config: Config, topology: aot.Topology, devices,
                 depth: tuple[int, ...]) -> cost_model.ProgramCost:
  """Compiles `config`'s train step at `depth` (unrolled) and costs it per chip (cost_model
  docstring)."""
  reduced = reduced_config(config, depth)
  setup = build_setup(reduced, devices=devices)
  batches = aot.abstract_batches(reduced, setup.batch_sharding)
  weights = {name: spec.loss_weight for name, spec in reduced.data.selected().items()}
  with sharding.active(setup.mesh):
    compiled = jit_train_step(reduced, setup, weights).lower(
        setup.abstract_state, setup.abstract_frozen, batches).compile()
  kernels = lambda: kernel_seconds(setup.task, setup.model_config, batches,  # noqa: E731
                                   reduced.data.packs(), topology.chip, topology.chips)
  return executable_cost(compiled, topology, setup.mesh, depth, kernels)


def executable_cost(compiled, topology: aot.Topology, mesh: jax.sharding.Mesh,
                    depth: tuple[int, ...], kernels) -> cost_model.ProgramCost:
  """Per-chip cost of one compiled program (a train step, a decode step): XLA's cost analysis,
  the loops' further trips, Pallas kernels (`kernels()`: their analytic seconds, asked for only if
  the program holds one) and its collectives over the slice's ICI. Frees the executable."""
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  module = collectives.parse_module(compiled.as_text())
  del compiled
  jax.clear_caches()  # Unrolled executables are large (the 9B row reached 14.6 GB): one at a time.
  chip = topology.chip
  optimal = float(cost.get("optimal_seconds", 0.0))
  flop, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  # No usable optimal_seconds (<= 0, as for the Llama-3.1-8B micro-batched step): the roofline with
  # no overlap of compute and HBM traffic. Where XLA gives one (the Llama-2-70B compiles), it is
  # 1.11x this sum and 1.25x max(flops / peak, bytes / bandwidth).
  compiler_s = optimal if optimal > 0 else (flop / chip.peak_flops
                                            + accessed / chip.hbm_bytes_per_s)
  comm = collectives.communication_seconds(
      collectives.collectives(module, topology.chips), interconnect(topology, mesh))
  return cost_model.ProgramCost(
      depth=depth, compiler_s=compiler_s,
      loop_s=hlo_loops.loop_seconds(module, compiler_s, chip.peak_flops),
      kernel_s=kernels() if hlo_loops.custom_kernels(module) else 0.0,
      flops=flop, bytes=accessed, comm_async_s=comm["async"], comm_sync_s=comm["sync"],
      comm_bytes=comm["bytes"], roofline=optimal <= 0)


def estimate(config: Config, topology: aot.Topology, compiles: int = 3) -> dict[str, Any]:
  """The calibrated estimate of `config` on `topology` (module docstring): step seconds compute-only
  and with exposed communication, MFU of each, tokens/s per chip, the fit and its wall time."""
  start = time.perf_counter()
  devices = aot.topology_devices(topology)
  costs = [program_cost(config, topology, devices, d) for d in reduced_depths(config, compiles)]
  model = cost_model.fit(costs)
  depth = full_depth(config)
  step = cost_model.step_seconds(model, depth)
  setup = build_setup(config, devices=devices)
  batches = aot.abstract_batches(config, setup.batch_sharding)
  model_flops = flops.train_step_flops(
      setup.task.step_matmuls(setup.model_config, batches, 1, config.data.packs()))
  peak = topology.chip.peak_flops * topology.chips
  tokens = sum(b * s for b, s in ((v["tokens"].shape) for v in batches.values()))
  full = model.at(depth)
  return {
      "method": METHOD, "depths": [list(c.depth) for c in costs], "full_depth": list(depth),
      "fit_max_residual": model.max_residual,
      "per_compile": [c.as_dict() | {"depth": list(c.depth)} for c in costs],
      "compute_s": step["compute_s"], "exposed_comm_s": step["exposed_comm_s"],
      "step_s": step["step_s"], "comm_s": full["comm_async_s"] + full["comm_sync_s"],
      "comm_bytes_per_chip": full["comm_bytes"], "model_flops_per_step": float(model_flops),
      "mfu_compute": model_flops / (step["compute_s"] * peak),
      "mfu_comm": model_flops / (step["step_s"] * peak),
      "tokens_per_s_per_chip": tokens / step["step_s"] / topology.chips,
      "tokens_per_s_per_chip_compute": tokens / step["compute_s"] / topology.chips,
      "estimate_wall_s": time.perf_counter() - start,
  }
