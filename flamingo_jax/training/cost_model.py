"""Step time of a full-depth model from a few reduced-depth compiles: per-layer costs, extrapolated.

Each reduced compile (layers unrolled, `ProgramCost`) is costed per chip as:
  compute = XLA's cost-analysis `optimal_seconds` (where it is <= 0, as the TPU compiler reports for
            some programs: flops / peak + bytes / HBM bandwidth, no overlap), plus what it does not
            count: the while loops that remain run their body (trip count - 1) more times (trip
            counts read from the HLO; a body holding most of the step is charged its share of
            the program's time, a smaller one its matmul FLOPs at peak: hlo_loops.loop_seconds), and
            Pallas kernels (splash attention) their analytic FLOPs and bytes at the chip's peak / HBM
            bandwidth;
  communication = the HLO's collectives over the ICI (collectives.communication_seconds), split
            into async (overlappable with compute) and sync (on the critical path).
Every cost is then fitted as `intercept + per_layer . depth` over the compiles (least squares; exact
for as many compiles as unknowns) and evaluated at full depth (`extrapolate`). The overlap model
(`step_seconds`): per part (the per-layer terms and the rest), exposed communication is
max(0, async - compute) + sync; the step takes compute + exposed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FIELDS = ("compute_s", "compiler_s", "loop_s", "kernel_s", "flops", "bytes", "comm_async_s",
          "comm_sync_s", "comm_bytes")


@dataclasses.dataclass(frozen=True)
class ProgramCost:
  """One compiled step, per chip: seconds, FLOPs and bytes."""

  depth: tuple[int, ...]  # The layer counts varied (LM layers[, vision layers]).
  compiler_s: float  # cost_analysis optimal_seconds (loop bodies once, kernels uncosted).
  loop_s: float  # The loops' further trips.
  kernel_s: float  # Pallas kernels, analytic.
  flops: float  # cost_analysis flops.
  bytes: float  # cost_analysis bytes accessed.
  comm_async_s: float
  comm_sync_s: float
  comm_bytes: float  # Ring bytes sent per chip.
  roofline: bool = False  # compiler_s is flops / peak + bytes / HBM bandwidth: the compiler gave
  # no usable optimal_seconds (<= 0).

  @property
  def compute_s(self) -> float:
    return self.compiler_s + self.loop_s + self.kernel_s

  def as_dict(self) -> dict[str, float]:
    return {f: float(getattr(self, f)) for f in FIELDS} | {"roofline": self.roofline}


@dataclasses.dataclass(frozen=True)
class Fit:
  """Linear costs in depth: value(depth) = intercept + per_layer . depth, for every FIELDS entry."""

  intercept: dict[str, float]
  per_layer: dict[str, tuple[float, ...]]  # One slope per depth variable.
  max_residual: float  # Largest relative misfit of compute_s over the compiles (0: exact).

  def at(self, depth: Sequence[int]) -> dict[str, float]:
    return {f: self.intercept[f] + float(np.dot(self.per_layer[f], depth)) for f in FIELDS}


def fit(costs: Sequence[ProgramCost]) -> Fit:
  """Least-squares line (plane, with two depth variables) through the compiles' costs. Needs at
  least one more compile than depth variables, each depth variable varied."""
  depths = np.asarray([c.depth for c in costs], dtype=float)
  design = np.concatenate([np.ones((len(costs), 1)), depths], axis=1)
  if np.linalg.matrix_rank(design) < design.shape[1]:
    raise ValueError(f"Compiles at depths {[c.depth for c in costs]} cannot separate a per-layer "
                     "cost from the rest: vary every depth, with one more compile than variables.")
  intercept, per_layer = {}, {}
  residual = 0.0
  for field in FIELDS:
    values = np.asarray([getattr(c, field) for c in costs])
    solution = np.linalg.lstsq(design, values, rcond=None)[0]
    intercept[field], per_layer[field] = float(solution[0]), tuple(map(float, solution[1:]))
    if field == "compute_s":
      residual = float(np.max(np.abs(design @ solution - values) / np.maximum(values, 1e-30)))
  return Fit(intercept, per_layer, residual)


def step_seconds(model: Fit, depth: Sequence[int]) -> dict[str, float]:
  """Compute-only and compute + exposed communication seconds at `depth`, with the overlap model
  of the module docstring applied to the intercept and to each layer's slope."""
  parts = [(model.intercept, 1.0)] + [
      ({f: model.per_layer[f][i] for f in FIELDS}, float(n)) for i, n in enumerate(depth)]
  compute = exposed = 0.0
  for part, count in parts:
    compute += part["compute_s"] * count
    exposed += (max(0.0, part["comm_async_s"] - part["compute_s"]) + part["comm_sync_s"]) * count
  return {"compute_s": compute, "exposed_comm_s": exposed, "step_s": compute + exposed}
