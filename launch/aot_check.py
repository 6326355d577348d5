r"""Will this config fit a TPU slice, and how fast will it step? Answered on a CPU-only machine.

  python -m launch.aot_check --config experiments/flamingo.py:flamingo_80b --topology v5p-256 \
      --config.mesh.fsdp=64 --config.mesh.tensor=2 [--json] [--noestimate] [--compiles=3]

Builds the trainer's mesh and abstract state for the slice's compile-only devices (libtpu), compiles
the real train step at full depth and prints per-chip memory (parameters, optimiser state,
temporaries, total vs HBM), whether it fits, the frozen-tower sharding policy (`mesh.frozen`), the
remat policy and the compile time (`flamingo_jax.training.aot`). Then the calibrated step estimate
(`flamingo_jax.training.estimate`, `--compiles` reduced-depth unrolled compiles extrapolated to full
depth): step time, MFU and tokens/s per chip compute-only and with exposed ICI communication, and the
method. Exit status 0 when it fits, 3 when it does not, 1 when it cannot be checked (libtpu missing, a
GPU target, a bad slice name or config).

  python -m launch.aot_check --mode generate --config experiments/flamingo.py:flamingo_80b \
      --topology v5p-64 --config.mesh.fsdp=4 --config.mesh.tensor=8 --config.mesh.frozen=tensor \
      --batch 16 --context 2048 --prompt 1024 --images 8

--mode generate checks serving instead (`flamingo_jax.tools.generate_fit`): the prefill and the
decode step compiled for the slice with the parameters laid out as training lays them out, memory
per chip of each, the largest batch at --context and the largest context at --batch, and the
decode step's estimated time and tokens/s per chip (the same estimator, on the decode step).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from flamingo_jax.config import Config
from flamingo_jax.tools import generate_fit
from flamingo_jax.training import aot, estimate

GPU_NAMES = ("gpu", "cuda", "h100", "h200", "a100", "b200")


def check(config: Config, topology: str, with_estimate: bool = False, compiles: int = 3) -> dict:
  """The report of `config` on `topology` (`aot.fit_report`), with `report["estimate"]`
  (`estimate.estimate`) when asked for and the step fits."""
  if topology.lower().startswith(GPU_NAMES):
    raise RuntimeError(aot.GPU_UNSUPPORTED)
  slice_ = aot.parse_topology(topology)
  report = aot.fit_report(config, slice_)
  if with_estimate and report["fits"]:
    report["estimate"] = estimate.estimate(config, slice_, compiles)
  return report


def check_generate(config: Config, topology: str, shape: generate_fit.ServeShape,
                   with_estimate: bool = False) -> dict:
  """The serving report of `config` on `topology` (`generate_fit.fit_report`)."""
  if topology.lower().startswith(GPU_NAMES):
    raise RuntimeError(aot.GPU_UNSUPPORTED)
  return generate_fit.fit_report(config, aot.parse_topology(topology), shape, with_estimate)


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  try:
    config = Config.from_dict(f.config)
    if f.mode == "generate":
      report = check_generate(config, f.topology, generate_fit.ServeShape(
          f.batch, f.context, f.prompt, f.images), f.estimate)
      text = generate_fit.format_report(report)
    else:
      report = check(config, f.topology, f.estimate, f.compiles)
      text = aot.format_report(report)
  except (RuntimeError, ValueError) as e:  # No libtpu, a GPU target, a bad slice or config.
    print(e, file=sys.stderr)
    return 1
  print(json.dumps(report) if f.json else text, flush=True)
  return 0 if report["fits"] else 3


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("topology", None, "TPU slice: v4-8, v5litepod-16, v5p-256, v6e-64, or a shape "
                      "such as v5p:4x4x8 / v5e:2x2.")
  flags.DEFINE_bool("json", False, "Print the report as one JSON object.")
  flags.DEFINE_bool("estimate", True, "Estimate the step time (--compiles more compiles).")
  flags.DEFINE_integer("compiles", 3, "Reduced-depth compiles the estimate fits (at least one more "
                       "than the depth variables: 2 for task=lm, 3 for flamingo).")
  flags.DEFINE_enum("mode", "train", ["train", "generate"], "Check the train step, or the "
                    "prefill and decode step of generation.")
  flags.DEFINE_integer("batch", 8, "--mode generate: rows decoded together.")
  flags.DEFINE_integer("context", 2048, "--mode generate: cache slots (prompt + new tokens).")
  flags.DEFINE_integer("prompt", 1024, "--mode generate: prompt tokens per row.")
  flags.DEFINE_integer("images", 8, "--mode generate: images per row.")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
