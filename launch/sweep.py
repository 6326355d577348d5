r"""Expand a sweep into named runs and print their training commands or run them here, in turn.

  python -m launch.sweep --config experiments/flamingo.py:tiny,data=demo \
      --sweep experiments/sweeps.py:ablations [--workdir workdirs/sweeps/ablations] --dry-run
  python -m launch.sweep ... --run [--config.train.num_steps=300 ...]

Each run is the base config (`--config`, with its `--config.*` overrides) plus the run's overrides
(flamingo_jax/config/sweeps.py names it from them) and trains in `<workdir>/<name>`. `--dry-run` (the
default) prints one `python -m flamingo_jax.training.train` command per run and nothing else. `--run` trains
the runs one after another in this process (a finished run is skipped: training resumes from its
workdir), then scores each on `--heldout_batches` held-out batches of every dataset
(`<run workdir>/heldout.json`), and writes the comparison with the first run (the baseline) to
`<workdir>/results.md` and the console.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from flamingo_jax.config import Config, sweeps
from launch.commands import TRAIN_MODULE, shell


def load_sweep(spec: str) -> list[dict]:
  """`path/to/file.py:name` -> that file's get_sweep(name)."""
  path, sep, name = spec.partition(":")
  if not sep or not name or not os.path.isfile(path):
    raise ValueError(f"--sweep={spec!r}: expected <file.py>:<name> with an existing file, e.g. "
                     "experiments/sweeps.py:ablations.")
  module_spec = importlib.util.spec_from_file_location("sweep_definitions", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_sweep(name)


def commands(runs: Sequence[sweeps.Run], config_arg: str, base_overrides: dict) -> list[str]:
  """One `python -m flamingo_jax.training.train` command line per run: the base config and its overrides,
  the run's workdir, then the run's overrides."""
  out = []
  for run in runs:
    argv = ["python", "-m", TRAIN_MODULE, f"--config={config_arg}", f"--workdir={run.workdir}"]
    argv += [sweeps.command_flag(k, v) for k, v in {**base_overrides, **run.overrides}.items()]
    out.append(shell(argv))
  return out


def results_table(results: dict[str, dict[str, float]]) -> str:
  """Markdown: held-out loss per dataset for each run, with the change against the first run."""
  names = list(results)
  datasets = list(results[names[0]])
  lines = [f"| run | {' | '.join(datasets)} |", "|---" * (len(datasets) + 1) + "|"]
  baseline = results[names[0]]
  for name in names:
    cells = [f"{results[name][d]:.3f}" if name == names[0] else
             f"{results[name][d]:.3f} ({results[name][d] - baseline[d]:+.3f})" for d in datasets]
    lines.append(f"| {name} | {' | '.join(cells)} |")
  return "\n".join(lines)


def run_all(runs: Sequence[sweeps.Run], workdir: str, heldout_batches: int) -> str:
  """Trains and scores every run in turn; returns the results table (also in workdir/results.md)."""
  from flamingo_jax.evaluation.heldout import heldout_losses
  from flamingo_jax.training import train as trainer
  results = {}
  for i, run in enumerate(runs):
    print(f"== run {i + 1}/{len(runs)}: {run.name} -> {run.workdir}", flush=True)
    trainer.train(run.config, run.workdir)
    results[run.name] = heldout_losses(run.workdir, heldout_batches)
    with open(os.path.join(run.workdir, "heldout.json"), "w") as f:
      json.dump({"overrides": run.overrides, "heldout_loss": results[run.name]}, f, indent=1)
    print(f"held-out loss: {json.dumps(results[run.name])}", flush=True)
  table = results_table(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  return table


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if f.run and f["dry-run"].value:
    raise app.UsageError("Pass one of --run and --dry-run.")
  sweep_name = f.sweep.partition(":")[2]
  workdir = f.workdir or os.path.join("workdirs", "sweeps", sweep_name)
  try:  # Every run's whole config is checked before the first one starts.
    runs = sweeps.expand(Config.from_dict(f.config), load_sweep(f.sweep), workdir)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if not f.run:
    config_arg = config_flags.get_config_filename(f["config"])
    print("\n".join(commands(runs, config_arg, config_flags.get_override_values(f["config"]))))
    return
  os.makedirs(workdir, exist_ok=True)
  print(run_all(runs, workdir, f.heldout_batches))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>, the base config.")
  flags.DEFINE_string("sweep", None, "<file.py>:<name>, e.g. experiments/sweeps.py:ablations.")
  flags.DEFINE_string("workdir", None, "Root of the runs' workdirs (default workdirs/sweeps/<name>).")
  flags.DEFINE_bool("run", False, "Train every run here, one after another, then score them.")
  flags.DEFINE_bool("dry-run", False, "Print the training commands only (the default).")
  flags.DEFINE_integer("heldout_batches", 4, "Held-out batches of every dataset per run (--run).")
  flags.mark_flags_as_required(["config", "sweep"])
  app.run(main)
