"""Ahead-of-time fit check: compile the real train step for a TPU slice on a CPU-only machine.

`libtpu` gives JAX compile-only devices for a TPU topology (`jax.experimental.topologies`); the
trainer's own setup (mesh, shardings, abstract state: `setup.build_setup`) and jitted update
(`setup.jit_train_step`) are lowered on them with abstract inputs (ShapeDtypeStructs: nothing is
allocated) and compiled by the TPU compiler. The compiled program says how much HBM a chip needs;
`fit_report` turns that into the per-chip table the CLI prints (`launch/aot_check.py`), with the
step-time estimate of `training.estimate` when it is attached (`report["estimate"]`).

Slice names (`parse_topology`): Cloud TPU names `v4-N`, `v5p-N` (N TensorCores, 2 per chip),
`v5litepod-N` / `v5e-N`, `v6e-N` (N chips), or explicit shapes `v4:2x2x4`, `v5p:4x4x8`, `v5e:4x8`,
`v6e:2x2`. GPUs: JAX cannot compile for a GPU without a CUDA device and its PJRT plugin, so there is
no GPU target (`GPU_UNSUPPORTED`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.training import flops, xla_flags
from flamingo_jax.training.metrics import PEAK_FLOPS
from flamingo_jax.training.setup import build_setup, jit_train_step

GIB = 2 ** 30
LIBTPU_MISSING = ("Compiling for a TPU topology on this machine needs libtpu: "
                  "pip install 'libtpu==0.0.42.1' (or pip install -e '.[tpu]'), the version "
                  "matching jax {jax}.")
GPU_UNSUPPORTED = ("JAX cannot compile ahead of time for a GPU on a machine without one: GPU "
                   "compilation needs a CUDA device and the jax-cuda PJRT plugin (there are no "
                   "compile-only GPU devices, unlike libtpu's TPU topologies). On a GPU host, the "
                   "trainer's own compile reports running out of memory before the first step.")


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: data-sheet figures per chip, and how Cloud TPU names its slices."""

  generation: str  # Topology name prefix libtpu expects: v4, v5e, v5p, v6e.
  hbm_gib: float  # HBM per chip.
  hbm_bytes_per_s: float  # HBM bandwidth per chip.
  peak_flops: float  # Dense bf16 FLOP/s per chip.
  dims: int  # 3: 3-D torus (shape AxBxC); 2: 2-D (AxB).
  cores_per_name_unit: int  # The N of `<name>-N` counts TensorCores (2 per chip) or chips (1).
  megacore: bool  # Two TensorCores driven as one JAX device.
  ici_bidirectional_bytes_per_s: float  # Inter-chip interconnect per chip, both directions.
  ici_ports: int  # ICI links per chip (2 per torus axis).
  full_torus_from: int  # An axis of this many chips or more closes into a ring (wraparound).

  @property
  def ici_link_bytes_per_s(self) -> float:
    """One direction of one link: the chip's bidirectional figure over its ports and directions."""
    return self.ici_bidirectional_bytes_per_s / self.ici_ports / 2

  def wraparound(self, shape: tuple[int, ...]) -> tuple[bool, ...]:
    """Per torus axis of a slice: whether its ring closes. v4 / v5p: every axis of a slice of whole
    4x4x4 cubes (the optical switches close them); v5e / v6e: an axis spanning the 16-chip pod."""
    whole = all(s >= self.full_torus_from and s % self.full_torus_from == 0 for s in shape)
    if self.dims == 3:
      return (whole,) * len(shape)
    return tuple(s >= self.full_torus_from for s in shape)


# Data sheets (Cloud TPU system architecture pages): peak bf16 FLOP/s, HBM capacity and bandwidth,
# bidirectional ICI bandwidth per chip and ICI ports per chip.
#  v4:  https://cloud.google.com/tpu/docs/v4 ("TPU v4": 275 TFLOPs, 32 GiB, 1200 GBps; 3-D torus on
#       slices whose sides are multiples of 4; no per-chip ICI figure: its "all-reduce bandwidth per
#       Pod 1.1 PB/s" over 4096 chips is 269 GB/s one way per chip, 537 GB/s both ways, 6 ports).
#  v5e: https://cloud.google.com/tpu/docs/v5e ("TPU v5e": bidirectional ICI 400 GBps per chip, 4 ICI
#       ports per chip, 2-D torus, 256-chip pod).
#  v5p: https://cloud.google.com/tpu/docs/v5p ("TPU v5p": bidirectional ICI 1200 GBps per chip,
#       3-D torus; "all 4x4x4 and larger slices have full 3-D torus connectivity").
#  v6e: https://cloud.google.com/tpu/docs/v6e ("TPU v6e": bidirectional ICI 800 GBps per chip, 4 ICI
#       ports per chip, 2-D torus, 256-chip pod).
CHIPS = {
    "v4": Chip("v4", 32, 1200e9, PEAK_FLOPS["TPU v4"], 3, 2, True, 2 * 1.1e15 / 4096, 6, 4),
    "v5e": Chip("v5e", 16, 819e9, PEAK_FLOPS["TPU v5e"], 2, 1, False, 400e9, 4, 16),
    "v5p": Chip("v5p", 95, 2765e9, PEAK_FLOPS["TPU v5p"], 3, 2, True, 1200e9, 6, 4),
    "v6e": Chip("v6e", 32, 1640e9, PEAK_FLOPS["TPU v6e"], 2, 1, False, 800e9, 4, 16),
}
GENERATION_ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p",
                      "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  shape: tuple[int, ...]  # Chips along each torus axis.

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    """libtpu's topology name, e.g. v5p:4x4x8."""
    return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"


def slice_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's default shape for a slice of `chips` (a power of two): start from one chip (2-D) or
  2x2x1 (3-D) and double the smallest axis, the last of equals first: 4 -> 2x2x1, 16 -> 2x2x4,
  256 -> 4x8x8 (3-D); 8 -> 2x4, 32 -> 4x8 (2-D)."""
  shape = [1, 1] if dims == 2 else [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
  if math.prod(shape) != chips:
    raise ValueError(f"No {dims}-D slice has {chips} chips: use a power of two"
                     f"{' of at least 4' if dims == 3 else ''}.")
  return tuple(shape)


def parse_topology(name: str) -> Topology:
  """`v5p-256` (Cloud name) or `v5p:4x4x8` (explicit shape) -> Topology; errors name the form."""
  match = re.fullmatch(r"(v4|v5e|v5litepod|v5lite|v5p|v6e)([-:])([0-9x]+)", name.strip().lower())
  if not match:
    raise ValueError(f"--topology={name!r}: use a Cloud TPU name (v4-8, v5litepod-16, v5p-256, "
                     "v6e-64) or an explicit shape (v4:2x2x2, v5e:4x4, v5p:4x4x8, v6e:8x8).")
  chip = CHIPS[GENERATION_ALIASES[match.group(1)]]
  if match.group(2) == "-":
    count = int(match.group(3)) if match.group(3).isdigit() else 0
    if count <= 0 or count % chip.cores_per_name_unit:
      unit = "TensorCores (2 per chip)" if chip.cores_per_name_unit == 2 else "chips"
      raise ValueError(f"--topology={name!r}: the number after '-' counts {unit}.")
    try:
      return Topology(chip, slice_shape(count // chip.cores_per_name_unit, chip.dims))
    except ValueError as e:
      raise ValueError(f"--topology={name!r}: {e}") from None
  shape = tuple(int(s) for s in match.group(3).split("x") if s)
  if len(shape) != chip.dims or min(shape) <= 0:
    example = "4x4x8" if chip.dims == 3 else "4x8"
    raise ValueError(f"--topology={name!r}: {chip.generation} slices have {chip.dims} axes, "
                     f"e.g. {chip.generation}:{example}.")
  return Topology(chip, shape)


def topology_devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of the slice (one per chip); needs libtpu. The trainer's TPU flags
  (`xla_flags.set_tpu_flags`) are set first, so the compiled step is the one the run compiles (if
  libtpu is already loaded in this process, the flags it loaded with stay)."""
  xla_flags.set_tpu_flags()
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise RuntimeError(LIBTPU_MISSING.format(jax=jax.__version__)) from e
  # Outside a TPU VM libtpu would warn about the missing VM metadata; these values silence it.
  # Compile-only devices touch no TPU, so several processes (tests, checks) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{topology.chip.generation}-8")
  from jax.experimental import topologies
  kwargs = {}
  if topology.chip.megacore:
    kwargs["chip_config_name"] = "megacore"
  host = (2, 2, 1)  # libtpu's default chips per host; smaller slices need their own bounds.
  shape3 = (*topology.shape, 1)[:3]
  if any(s < h for s, h in zip(shape3, host)):
    kwargs["chips_per_host_bounds"] = tuple(min(s, h) for s, h in zip(shape3, host))
  return list(topologies.get_topology_desc(topology_name=topology.name, platform="tpu",
                                           **kwargs).devices)


def abstract_batches(config: Config, batch_sharding: jax.sharding.Sharding) -> dict[str, dict[str, Any]]:
  """{dataset: {key: ShapeDtypeStruct}}: one global batch of every dataset the trainer reads
  (`config.data.selected()`: `data.exclude` honoured; with `data.accumulation=round_robin` the step
  of all datasets together is compiled, an upper bound of each single-dataset step) in the
  mixture's keys, shapes and dtypes (`DatasetConfig.batch_shapes`: a dataset packed k examples to a
  row has B / k rows of k * T tokens and k * N slots, with segments and positions), on
  `batch_sharding` (`setup.check_batch_split` has checked that the rows split over it)."""
  size = config.model.vision.image_size
  return {name: {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_sharding)
                 for k, (shape, dtype) in spec.batch_shapes(size).items()}
          for name, spec in config.data.selected().items()}


def bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard per leaf)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


_SIZE = r"([0-9.]+)([KMGTP]?)"
# The TPU compiler's out-of-HBM errors: the whole program, or its temporaries alone.
_OOM_TOTAL = re.compile(rf"Used {_SIZE} of {_SIZE} hbm")
_OOM_TEMPORARIES = re.compile(rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)")


def _parse_oom(message: str) -> tuple[str, float, float] | None:
  """("total" | "temporaries", bytes needed, bytes the compiler had) from the TPU compiler's
  out-of-HBM error, or None for any other error. Sizes are binary (1.5G = 1.5 GiB)."""
  scale = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}
  for kind, pattern in (("total", _OOM_TOTAL), ("temporaries", _OOM_TEMPORARIES)):
    match = pattern.search(message)
    if match:
      needed, unit, available, available_unit = match.groups()
      return kind, float(needed) * scale[unit], float(available) * scale[available_unit]
  return None


def fit_report(config: Config, topology: Topology) -> dict[str, Any]:
  """Compiles the train step of `config` for `topology` and returns the per-chip report: memory in
  GiB (frozen / trainable parameters, optimiser state, batch, temporaries, total vs HBM), fits,
  overflow, model FLOPs per step, estimated step time (and how it was estimated), MFU, compile s."""
  devices = topology_devices(topology)
  setup = build_setup(config, devices=devices)
  batches = abstract_batches(config, setup.batch_sharding)
  loss_weights = {name: spec.loss_weight for name, spec in config.data.selected().items()}
  chip = topology.chip
  report: dict[str, Any] = {
      "preset": config.preset, "topology": topology.name, "chips": topology.chips,
      "device_kind": devices[0].device_kind,
      "mesh": dict(zip(setup.mesh.axis_names, map(int, setup.mesh.devices.shape))),
      "remat_policy": setup.model_config.execution.remat_policy,
      "frozen_policy": config.mesh.frozen,
      "micro_batches": config.train.micro_batches,
      "frozen_params_gib": bytes_per_device(setup.abstract_frozen) / GIB,
      "trainable_params_gib": bytes_per_device(setup.abstract_state.trainable) / GIB,
      "optimizer_state_gib": bytes_per_device(setup.abstract_state.opt_state) / GIB,
      "batch_gib": bytes_per_device(batches) / GIB,
      "hbm_gib": float(chip.hbm_gib),
  }
  matmuls = setup.task.step_matmuls(
      setup.model_config, batches, process_count=1,
      packs=config.data.packs())
  report["model_flops_per_step"] = float(flops.train_step_flops(matmuls))

  start, start_cpu = time.perf_counter(), time.process_time()
  with sharding.active(setup.mesh):
    lowered = jit_train_step(config, setup, loss_weights).lower(
        setup.abstract_state, setup.abstract_frozen, batches)
    try:
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler reports running out of HBM this way.
      oom = _parse_oom(str(e))
      if oom is None:
        raise
      kind, needed, available = oom
      resident = sum(report[k] for k in ("frozen_params_gib", "trainable_params_gib",
                                         "optimizer_state_gib", "batch_gib"))
      temporaries = None if kind == "total" else needed / GIB
      total = needed / GIB if kind == "total" else temporaries + resident
      report.update(compile_s=time.perf_counter() - start,
                    compile_cpu_s=time.process_time() - start_cpu, temporaries_gib=temporaries,
                    total_gib=total, fits=False, overflow_gib=total - chip.hbm_gib,
                    compiler_hbm_gib=available / GIB, compiler_error=str(e).splitlines()[0][:300])
      return report
  # Wall time, and CPU time of all this process's threads (what a busy machine does not inflate).
  report.update(compile_s=time.perf_counter() - start, compile_cpu_s=time.process_time() - start_cpu)

  memory = compiled.memory_analysis()
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes
           + memory.generated_code_size_in_bytes)
  report.update(temporaries_gib=memory.temp_size_in_bytes / GIB, total_gib=total / GIB,
                fits=total <= chip.hbm_gib * GIB,
                overflow_gib=max(0.0, total / GIB - chip.hbm_gib))
  return report


def format_report(report: dict[str, Any]) -> str:
  """The report as aligned lines for the console."""
  gib = lambda key: "n/a" if report.get(key) is None else f"{report[key]:.2f} GiB"  # noqa: E731
  lines = [
      f"{report['preset']} on {report['topology']} ({report['chips']} x {report['device_kind']}), "
      f"mesh {report['mesh']}, frozen {report['frozen_policy']}, remat {report['remat_policy']}, "
      f"micro_batches {report['micro_batches']}",
      f"  per chip: frozen params {gib('frozen_params_gib')}, trainable params "
      f"{gib('trainable_params_gib')}, optimiser state {gib('optimizer_state_gib')}, batch "
      f"{gib('batch_gib')}, temporaries {gib('temporaries_gib')}",
      f"  total {gib('total_gib')} of {report['hbm_gib']:.0f} GiB HBM: "
      + ("fits" if report["fits"] else f"DOES NOT FIT (over by {report['overflow_gib']:.2f} GiB)"),
      f"  model FLOPs per step {report['model_flops_per_step']:.3e}",
  ]
  if report.get("estimate"):
    e = report["estimate"]
    lines += [
        f"  estimated step: compute only {e['compute_s'] * 1e3:.1f} ms (MFU {e['mfu_compute']:.1%}, "
        f"{e['tokens_per_s_per_chip_compute']:.0f} tokens/s/chip); with exposed communication "
        f"{e['step_s'] * 1e3:.1f} ms (MFU {e['mfu_comm']:.1%}, {e['tokens_per_s_per_chip']:.0f} "
        f"tokens/s/chip; ICI {e['comm_s'] * 1e3:.1f} ms, {e['exposed_comm_s'] * 1e3:.1f} ms exposed)",
        f"  method: {e['method']}; depths {e['depths']} -> {e['full_depth']} (fit residual "
        f"{e['fit_max_residual']:.1%}), {e['estimate_wall_s']:.0f} s"]
  if report.get("compiler_error"):
    lines.append(f"  compiler: {report['compiler_error']}")
  lines.append(f"  compile time {report['compile_s']:.1f} s ({report['compile_cpu_s']:.1f} s of CPU)")
  return "\n".join(lines)
