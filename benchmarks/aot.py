r"""AOT benchmark: per-chip memory, compile time and the calibrated step estimate of every row of
README.md's TPU table, and the estimate's calibration against published MaxText runs.

  python benchmarks/aot.py                       # the 80B row on the table's largest slice
  python benchmarks/aot.py --row flamingo_9b:v5p-32          # <preset>:<slice>[:<frozen policy>]
  python benchmarks/aot.py --all                 # every row, then the best v5p row per preset
  python benchmarks/aot.py --calibration         # Llama-2-70B on v5p-512, Llama-3.1-8B on v6e-256
  python benchmarks/aot.py --generate [--row flamingo_80b:v5p-32]   # serving: prefill + decode step

Per row (JSON lines): aot_compile_s (aot_80b_compile_s for the 80B row on the largest slice: the
full-depth scanned compile the memory check needs; target <= 600 s on this machine),
aot_memory_per_chip_gib (extras: the parts, HBM, fits), est_mfu_compute_<preset>_<slice> and
est_mfu_comm_<preset>_<slice> (`training.estimate`: compute-only, and with exposed ICI communication;
extras: step times, tokens/s per chip, mesh, frozen policy, remat) and est_wall_s (the estimator's
own compiles). --all adds est_mfu_comm_{3b,9b,80b}_v5p: the best row of each preset that fits.
--calibration: calibration_<model>_<slice> = estimated / published MFU (extras: both MFUs, tokens/s
per chip estimated and published, compute-only vs with communication).
--generate (`launch.aot_check --mode generate`, GENERATE_ROWS): per row serve_memory_per_chip_gib
(the decode step at the row's shape; extras: prefill, params, cache), serve_max_batch_<preset>_<slice>
(the largest batch at the row's context, compiled), serve_max_context_<preset>_<slice>
(extrapolated) and serve_est_tokens_per_s_per_chip_<preset>_<slice> (decode, estimated).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from experiments import idefics, llama  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from flamingo_jax.tools import generate_fit  # noqa: E402
from flamingo_jax.training import aot, estimate  # noqa: E402

# Where data x fsdp devices exceed video's 8 packed rows (64 clips, pack=8), the rows cannot be split:
# video runs unpacked (64 rows) in its own LM pass (train.lm_pass=per_dataset; experiments/flamingo.py).
_VIDEO_UNPACKED = {"train.lm_pass": "per_dataset", "data.datasets.video.pack": 1}
# One LM pass on 16 chips, frozen and trainable weights FSDP-split over all 16, remat by name, clips
# packed 4 to a 256-token row (row_len) so that video's 16 rows split over the 16 batch devices.
_ONE_PASS_FSDP16 = {"mesh.data": 1, "mesh.fsdp": 16, "mesh.frozen": "fsdp",
                    "model.execution.remat_policy": "save_dot_except_mlp_in",
                    "data.datasets.video.pack": 4, "data.datasets.video.row_len": 256}
# (preset, slice, config overrides): the rows of docs/results.md's TPU training table.
ROWS = (
    ("flamingo_3b", "v5p-16", {"mesh.data": 1, "mesh.fsdp": 8,
                               "model.execution.remat_policy": "dots"}),
    ("flamingo_3b", "v5p-32", {"mesh.data": 1, "mesh.fsdp": 16, **_VIDEO_UNPACKED}),
    # One LM pass, the frozen towers replicated (3.6 GB of bf16 per chip): see the 9B v5p-16 row.
    ("flamingo_3b", "v5p-16", {"mesh.data": 1, "mesh.fsdp": 8, "mesh.frozen": "replicated",
                               "model.execution.remat_policy": "save_dot_except_mlp_in"}),
    ("flamingo_9b", "v5p-32", {"mesh.data": 1, "mesh.fsdp": 16,
                               "model.execution.remat_policy": "dots", **_VIDEO_UNPACKED}),
    # One LM pass (the preset's joint pass), frozen towers split over tensor only (never gathered),
    # remat by name: 8 batch devices so that video's 8 packed rows split.
    ("flamingo_9b", "v5p-32", {"mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 2,
                               "mesh.frozen": "tensor",
                               "model.execution.remat_policy": "save_dot_except_mlp_in"}),
    # The same pass on half the chips with the frozen towers replicated (14.8 GB of bf16 per chip):
    # no frozen weight is ever gathered and no frozen matmul is split, so the only collectives left
    # are the trainable tree's FSDP gathers and gradient reductions, which overlap with compute.
    ("flamingo_9b", "v5p-16", {"mesh.data": 1, "mesh.fsdp": 8, "mesh.frozen": "replicated",
                               "model.execution.remat_policy": "save_dot_except_mlp_in"}),
    # The 80B v5p-32 row's structure on Trillium's 32 GiB chips.
    ("flamingo_9b", "v6e-16", _ONE_PASS_FSDP16),
    # The same on v5e's 16 GiB chips for the 3B preset (9B's 16.8 GiB of temporaries per chip on
    # v6e-16 leave it no room there).
    ("flamingo_3b", "v5e-16", _ONE_PASS_FSDP16),
    ("flamingo_9b", "v5p-64", {"mesh.data": 1, "mesh.fsdp": 32,
                               "model.execution.remat_policy": "dots", **_VIDEO_UNPACKED}),
    # The frozen LM (140 GB) FSDP-split (8.2 GiB per chip), gathered once forward and once backward
    # per update, asynchronously.
    ("flamingo_80b", "v5p-32", _ONE_PASS_FSDP16),
    ("flamingo_80b", "v5p-128", {"mesh.data": 1, "mesh.fsdp": 64, **_VIDEO_UNPACKED}),
    ("flamingo_80b", "v5p-256", {"mesh.data": 1, "mesh.fsdp": 64, "mesh.tensor": 2,
                                 **_VIDEO_UNPACKED}),
)
# (preset, compiles): the calibration runs (experiments/llama.py); task=lm has one depth variable,
# and its unrolled layers are identical, so two depths fix the line.
CALIBRATIONS = (("llama2_70b", 2), ("llama31_8b", 2))


# Serving rows (preset, slice, overrides): the model split over tensor (its frozen towers never
# gathered), rows over data; one shape: 8 images and 1,024 prompt tokens per row, 2,048 slots.
SERVE_SHAPE = generate_fit.ServeShape(batch=16, context=2048, prompt=1024, images=8)
_SERVE = {"mesh.frozen": "tensor", "mesh.fsdp": 1}
GENERATE_ROWS = (
    ("flamingo_80b", "v5p-32", {**_SERVE, "mesh.data": 1, "mesh.tensor": 16}),
    ("flamingo_9b", "v5p-8", {**_SERVE, "mesh.data": 1, "mesh.tensor": 4}),
    ("flamingo_9b", "v5e-8", {**_SERVE, "mesh.data": 1, "mesh.tensor": 8}),
    ("flamingo_9b", "v6e-8", {**_SERVE, "mesh.data": 2, "mesh.tensor": 4}),
    # 80B on Trillium: its bf16 weights split over 16 chips of 32 GiB (tensor stops at 16: the vision
    # tower's and the resampler's 16 heads split over it).
    ("flamingo_80b", "v6e-16", {**_SERVE, "mesh.data": 1, "mesh.tensor": 16}),
    # On 16-GiB v5e chips the 80B split 16 ways does not fit (its prefill takes 18.9 GiB per chip on
    # v6e-16): the frozen weights split over fsdp too, gathered layer by layer at every step.
    ("flamingo_80b", "v5e-32", {"mesh.frozen": "fsdp", "mesh.data": 1, "mesh.fsdp": 2,
                                "mesh.tensor": 16}),
    ("idefics_80b", "v5p-32", {**_SERVE, "mesh.data": 1, "mesh.tensor": 16}),
)


def row_config(preset: str, overrides: dict) -> Config:
  source = idefics if preset.startswith("idefics") else presets
  return Config.from_dict(source.get_config(preset)).replace(overrides)


def command(row) -> str:
  preset, topology, overrides = row
  flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return (f"python -m launch.aot_check --config experiments/flamingo.py:{preset} "
          f"--topology {topology} {flags}").strip()


def largest_80b_row():
  rows = [r for r in ROWS if r[0] == "flamingo_80b"]
  return max(rows, key=lambda r: aot.parse_topology(r[1]).chips)


def short(preset: str, topology: str) -> str:
  """flamingo_9b, v5p-32 -> 9b_v5p32 (metric names)."""
  return f"{preset.removeprefix('flamingo_')}_{topology.replace('-', '')}"


def _estimate_metrics(emit, e: dict, name: str, **tags) -> None:
  extras = dict(compute_s=round(e["compute_s"], 4), step_s=round(e["step_s"], 4),
                comm_s=round(e["comm_s"], 4), exposed_comm_s=round(e["exposed_comm_s"], 4),
                tokens_per_s_per_chip=round(e["tokens_per_s_per_chip"], 1),
                tokens_per_s_per_chip_compute=round(e["tokens_per_s_per_chip_compute"], 1),
                depths=e["depths"], fit_max_residual=round(e["fit_max_residual"], 4), **tags)
  emit(f"est_mfu_compute_{name}", e["mfu_compute"], "fraction", **extras)
  emit(f"est_mfu_comm_{name}", e["mfu_comm"], "fraction", **extras)
  emit("est_wall_s", e["estimate_wall_s"], "s", row=name, method=e["method"],
       per_compile=e["per_compile"])


def run_row(emit, row) -> dict:
  """Memory check (full-depth compile) and estimate of one row; returns the report."""
  preset, topology, overrides = row
  report = aot.fit_report(row_config(preset, overrides), aot.parse_topology(topology))
  tags = dict(preset=preset, topology=report["topology"], mesh=report["mesh"],
              frozen=report["frozen_policy"], remat=report["remat_policy"],
              micro_batches=report["micro_batches"], command=command(row))
  compile_metric = "aot_80b_compile_s" if row == largest_80b_row() else "aot_compile_s"
  emit(compile_metric, report["compile_s"], "s", cpu_s=round(report["compile_cpu_s"], 1), **tags)
  parts = {k: round(report[k], 3) for k in ("frozen_params_gib", "trainable_params_gib",
                                            "optimizer_state_gib", "batch_gib", "temporaries_gib")
           if report.get(k) is not None}
  emit("aot_memory_per_chip_gib", report["total_gib"], "GiB", hbm_gib=report["hbm_gib"],
       fits=report["fits"], overflow_gib=round(report["overflow_gib"], 3), **parts, **tags)
  if report["fits"]:
    report["estimate"] = estimate.estimate(row_config(preset, overrides),
                                           aot.parse_topology(topology))
    _estimate_metrics(emit, report["estimate"], short(preset, topology), **tags)
  return report


def best_rows(emit, reports: list[tuple[tuple, dict]]) -> None:
  """est_mfu_comm_<3b|9b|80b>_v5p: the fitting v5p row of each preset with the best estimate."""
  for preset in ("flamingo_3b", "flamingo_9b", "flamingo_80b"):
    done = [(row, r) for row, r in reports
            if row[0] == preset and row[1].startswith("v5p") and r.get("estimate")]
    if done:
      row, r = max(done, key=lambda x: x[1]["estimate"]["mfu_comm"])
      emit(f"est_mfu_comm_{preset.removeprefix('flamingo_')}_v5p", r["estimate"]["mfu_comm"],
           "fraction", topology=row[1], command=command(row))


def run_generate_row(emit, row) -> None:
  preset, topology, overrides = row
  r = generate_fit.fit_report(row_config(preset, overrides), aot.parse_topology(topology),
                              SERVE_SHAPE)
  name = short(preset, topology)
  tags = dict(preset=preset, topology=r["topology"], mesh=r["mesh"], frozen=r["frozen_policy"],
              shape=r["shape"], command=f"python -m launch.aot_check --mode generate "
              f"--config experiments/{'idefics' if preset.startswith('idefics') else 'flamingo'}.py"
              f":{preset} --topology {topology} "
              + " ".join(f"--config.{k}={v}" for k, v in overrides.items())
              + f" --batch {SERVE_SHAPE.batch} --context {SERVE_SHAPE.context} --prompt "
              f"{SERVE_SHAPE.prompt} --images {SERVE_SHAPE.images}")
  emit("serve_memory_per_chip_gib", r["decode_total_gib"], "GiB", fits=r["fits"],
       prefill_gib=round(r["prefill_total_gib"], 3), params_gib=round(r["params_gib"], 3),
       cache_gib=round(r["cache_gib"], 3), hbm_gib=r["hbm_gib"], compile_s=round(r["compile_s"], 1),
       **tags)
  emit(f"serve_max_batch_{name}", r["max_batch_at_context"], "rows",
       context=SERVE_SHAPE.context, compiled_gib=r["max_batch_decode_total_gib"],
       batches_compiled=r["batches_compiled"], **tags)
  if r["max_context_at_batch"] is not None:  # None: the compiles give no line that grows.
    emit(f"serve_max_context_{name}", r["max_context_at_batch"], "slots",
         batch=SERVE_SHAPE.batch,
         method="extrapolated from the two largest decode compiles that fit", **tags)
  if r.get("estimate"):
    e = r["estimate"]
    emit(f"serve_est_tokens_per_s_per_chip_{name}", e["tokens_per_s_per_chip"], "tokens/s",
         decode_step_s=round(e["decode_step_s"], 5), compute_s=round(e["decode_compute_s"], 5),
         exposed_comm_s=round(e["decode_exposed_comm_s"], 5), method=e["method"],
         per_compile=e["per_compile"], **tags)


def run_calibration(emit, preset: str, compiles: int) -> None:
  published = llama.CALIBRATION[preset]
  config = Config.from_dict(llama.get_config(preset))
  e = estimate.estimate(config, aot.parse_topology(published.topology), compiles)
  name = f"calibration_{preset}_{published.topology.split('-')[0]}"
  emit(name, e["mfu_comm"] / published.mfu, "ratio", published_mfu=published.mfu,
       estimated_mfu_comm=round(e["mfu_comm"], 4), estimated_mfu_compute=round(e["mfu_compute"], 4),
       tokens_per_s_per_chip_estimated=round(e["tokens_per_s_per_chip"], 1),
       tokens_per_s_per_chip_compute=round(e["tokens_per_s_per_chip_compute"], 1),
       tokens_per_s_per_chip_published=published.tokens_per_s_per_chip,
       compute_s=round(e["compute_s"], 4), step_s=round(e["step_s"], 4),
       comm_s=round(e["comm_s"], 4), exposed_comm_s=round(e["exposed_comm_s"], 4),
       depths=e["depths"], per_compile=e["per_compile"], topology=published.topology,
       source=published.source, estimate_wall_s=round(e["estimate_wall_s"], 1),
       command=f"python -m launch.aot_check --config experiments/llama.py:{preset} "
               f"--topology {published.topology} --compiles={compiles}")


def row_key(row) -> str:
  """<preset>:<slice>:<frozen policy>, e.g. flamingo_9b:v5p-16:replicated."""
  return f"{row[0]}:{row[1]}:{row[2].get('mesh.frozen', 'fsdp')}"


def selected(parser, rows, wanted: str | None) -> list:
  """The rows whose key starts with `wanted` (<preset>:<slice>[:<frozen>]; all when None)."""
  chosen = [r for r in rows if not wanted or f"{row_key(r)}:".startswith(f"{wanted}:")]
  if not chosen:
    parser.error(f"--row={wanted!r}: choose one of {', '.join(map(row_key, rows))}.")
  return chosen


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--all", action="store_true", help="Every row of the table.")
  parser.add_argument("--row", help="Rows as <preset>:<slice>[:<frozen policy>], e.g. "
                      "flamingo_3b:v5p-16 or flamingo_9b:v5p-16:replicated.")
  parser.add_argument("--calibration", action="store_true",
                      help="The estimate against MaxText's published Llama runs.")
  parser.add_argument("--only", help="--calibration of one model: llama2_70b or llama31_8b.")
  parser.add_argument("--generate", action="store_true",
                      help="Serving rows (GENERATE_ROWS); with --row, one of them.")
  args = parser.parse_args()
  emit = emitter("aot")
  environment(emit)
  if args.calibration:
    for preset, compiles in CALIBRATIONS:
      if not args.only or args.only == preset:
        run_calibration(emit, preset, compiles)
    return
  if args.generate:
    for row in selected(parser, GENERATE_ROWS, args.row):
      run_generate_row(emit, row)
    return
  rows = (selected(parser, ROWS, args.row) if args.row else
          list(ROWS) if args.all else [largest_80b_row()])
  reports = [(row, run_row(emit, row)) for row in rows]
  if args.all:
    best_rows(emit, reports)


if __name__ == "__main__":
  main()
