r"""Will this config fit a TPU slice, and how fast will it step? Answered on a CPU-only machine.

  python -m launch.aot_check --config experiments/flamingo.py:flamingo_80b --topology v5p-256 \
      --config.mesh.fsdp=64 --config.mesh.tensor=2 [--json]

Builds the trainer's mesh and abstract state for the slice's compile-only devices (libtpu), compiles
the real train step and prints per-chip memory (parameters, optimiser state, temporaries, total vs
HBM), whether it fits, model FLOPs per step, the estimated step time, MFU and the compile time
(`flamingo_jax.training.aot`). Exit status 0 when it fits, 3 when it does not, 1 when it cannot be checked
(libtpu missing, a GPU target, a bad slice name or config).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from flamingo_jax.config import Config
from flamingo_jax.training import aot

GPU_NAMES = ("gpu", "cuda", "h100", "h200", "a100", "b200")


def check(config: Config, topology: str) -> dict:
  """The report of `config` on `topology` (see `flamingo_jax.training.aot.fit_report`)."""
  if topology.lower().startswith(GPU_NAMES):
    raise RuntimeError(aot.GPU_UNSUPPORTED)
  return aot.fit_report(config, aot.parse_topology(topology))


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  try:
    report = check(Config.from_dict(f.config), f.topology)
  except (RuntimeError, ValueError) as e:  # No libtpu, a GPU target, a bad slice or config.
    print(e, file=sys.stderr)
    return 1
  print(json.dumps(report) if f.json else aot.format_report(report), flush=True)
  return 0 if report["fits"] else 3


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("topology", None, "TPU slice: v4-8, v5litepod-16, v5p-256, v6e-64, or a shape "
                      "such as v5p:4x4x8 / v5e:2x2.")
  flags.DEFINE_bool("json", False, "Print the report as one JSON object.")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
