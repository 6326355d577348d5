r"""AOT fit-check benchmark: compile time of the 80B train step for a TPU slice on this CPU, and the
per-chip memory and estimated MFU of every row of README.md's TPU table.

  python benchmarks/aot.py           # the 80B row on the table's largest slice
  python benchmarks/aot.py --all     # every row (one compile each, one after another)
  python benchmarks/aot.py --row flamingo_3b:v5p-16

Prints JSON lines per row: aot_compile_s (aot_80b_compile_s for the 80B row on the largest slice;
target < 600 s on this machine), aot_memory_per_chip_gib (total per chip; extras: the parts, HBM,
fits), aot_mfu (model FLOPs / (estimated step time x peak x chips)) and aot_step_time_s. ROWS is the
table: each row's mesh, remat policy and micro-batches are the tuned settings the README lists, and
`command(row)` is its `launch.aot_check` command line.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from flamingo_jax.training import aot  # noqa: E402

# (preset, slice, config overrides): README.md's TPU table, smallest slice first per preset.
ROWS = (
    ("flamingo_3b", "v5p-16", {"mesh.data": 1, "mesh.fsdp": 8,
                               "model.execution.remat_policy": "dots"}),
    ("flamingo_3b", "v5p-32", {"mesh.data": 1, "mesh.fsdp": 16}),
    ("flamingo_9b", "v5p-32", {"mesh.data": 1, "mesh.fsdp": 16,
                               "model.execution.remat_policy": "dots"}),
    ("flamingo_9b", "v5p-64", {"mesh.data": 1, "mesh.fsdp": 32,
                               "model.execution.remat_policy": "dots"}),
    ("flamingo_80b", "v5p-128", {"mesh.data": 1, "mesh.fsdp": 64}),
    ("flamingo_80b", "v5p-256", {"mesh.data": 1, "mesh.fsdp": 64, "mesh.tensor": 2}),
)


def row_config(preset: str, overrides: dict) -> Config:
  return Config.from_dict(presets.get_config(preset)).replace(overrides)


def command(row) -> str:
  preset, topology, overrides = row
  flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return (f"python -m launch.aot_check --config experiments/flamingo.py:{preset} "
          f"--topology {topology} {flags}").strip()


def largest_80b_row():
  rows = [r for r in ROWS if r[0] == "flamingo_80b"]
  return max(rows, key=lambda r: aot.parse_topology(r[1]).chips)


def run_row(emit, row) -> None:
  preset, topology, overrides = row
  report = aot.fit_report(row_config(preset, overrides), aot.parse_topology(topology))
  tags = dict(preset=preset, topology=report["topology"], mesh=report["mesh"],
              remat=report["remat_policy"], micro_batches=report["micro_batches"],
              command=command(row))
  compile_metric = "aot_80b_compile_s" if row == largest_80b_row() else "aot_compile_s"
  emit(compile_metric, report["compile_s"], "s", cpu_s=round(report["compile_cpu_s"], 1), **tags)
  parts = {k: round(report[k], 3) for k in ("frozen_params_gib", "trainable_params_gib",
                                            "optimizer_state_gib", "batch_gib", "temporaries_gib")
           if report.get(k) is not None}
  emit("aot_memory_per_chip_gib", report["total_gib"], "GiB", hbm_gib=report["hbm_gib"],
       fits=report["fits"], overflow_gib=round(report["overflow_gib"], 3), **parts, **tags)
  if report["step_time_s"]:
    emit("aot_step_time_s", report["step_time_s"], "s", source=report["step_time_source"], **tags)
    emit("aot_mfu", report["mfu"], "fraction", **tags)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--all", action="store_true", help="Every row of the table.")
  parser.add_argument("--row", help="One row, as <preset>:<slice>, e.g. flamingo_3b:v5p-16.")
  args = parser.parse_args()
  if args.row:
    rows = [r for r in ROWS if f"{r[0]}:{r[1]}" == args.row]
    if not rows:
      parser.error(f"--row={args.row!r}: choose one of "
                   f"{', '.join(f'{r[0]}:{r[1]}' for r in ROWS)}.")
  else:
    rows = list(ROWS) if args.all else [largest_80b_row()]
  emit = emitter("aot")
  environment(emit)
  for row in rows:
    run_row(emit, row)


if __name__ == "__main__":
  main()
