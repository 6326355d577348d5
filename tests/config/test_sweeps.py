"""Sweeps: products / zips / chains of overrides expand into named runs; the launcher prints or runs
them (flamingo_jax/config/sweeps.py, experiments/sweeps.py, launch/sweep.py)."""

import json
import os
import subprocess
import sys

import pytest

from experiments import flamingo
from experiments import sweeps as experiment_sweeps
from flamingo_jax.config import Config
from flamingo_jax.config.sweeps import apply_overrides, chain, expand, product, run_name, sweep, zip_
from flamingo_jax.evaluation.heldout import heldout_losses
from flamingo_jax.training import metrics
from launch import sweep as launcher
from tests.configs import train_small


def _preset(arg: str) -> Config:
  return Config.from_dict(flamingo.get_config(arg))


def test_sweep_expands_to_named_runs_with_overrides_and_workdirs():
  lr_x_every = product(sweep("optimizer.learning_rate", [3e-4, 1e-3]),
                       sweep("model.xattn.every", [1, 2]))
  base = _preset("tiny")
  runs = expand(base, lr_x_every, "/sweeps/lr")
  assert [r.name for r in runs] == [
      "learning_rate=0.0003,every=1", "learning_rate=0.0003,every=2",
      "learning_rate=0.001,every=1", "learning_rate=0.001,every=2"]
  assert runs[1].overrides == {"optimizer.learning_rate": 3e-4, "model.xattn.every": 2}
  assert runs[1].workdir == "/sweeps/lr/learning_rate=0.0003,every=2"
  assert runs[1].config.optimizer.learning_rate == 3e-4 and runs[1].config.model.xattn.every == 2
  assert base.model.xattn.every == 2  # The base is not modified.

  seeds = zip_(sweep("seed", [0, 1]), sweep("data.seed", [5, 6]))
  assert seeds == [{"seed": 0, "data.seed": 5}, {"seed": 1, "data.seed": 6}]
  assert run_name(seeds[1]) == "seed=1,data.seed=6"  # Shared last component: the whole key.
  assert chain([{}], sweep("model.xattn.gate", ["none"])) == [{}, {"model.xattn.gate": "none"}]
  assert run_name({}) == "baseline"
  assert run_name({"data.exclude": "a/b c"}) == "exclude=a_b_c"

  # The ablation sweep: the baseline first, then one run per paper switch.
  ablations = experiment_sweeps.get_sweep("ablations")
  assert ablations[0] == {}
  switched = {key for overrides in ablations for key in overrides}
  assert {"data.exclude", "model.xattn.gate", "model.xattn.every", "model.resampler.kind",
          "train.freeze_lm", "model.xattn.media_attention", "data.accumulation"} <= switched
  names = [r.name for r in expand(_preset("tiny,data=demo"), ablations, "w")]
  assert len(set(names)) == len(names)

  with pytest.raises(ValueError, match="different lengths"):
    zip_(sweep("seed", [0, 1]), sweep("data.seed", [0]))
  with pytest.raises(ValueError, match="run 'evry=2': Unknown config field model.xattn.evry"):
    apply_overrides(_preset("tiny"), {"model.xattn.evry": 2}, "evry=2")
  with pytest.raises(ValueError, match="model.xattn.gate='sigmoid'"):
    apply_overrides(_preset("tiny"), {"model.xattn.gate": "sigmoid"})
  with pytest.raises(ValueError, match="two runs named 'every=1'"):
    expand(_preset("tiny"), sweep("model.xattn.every", [1, 1]), "w")
  # Every run's whole config is checked when the sweep expands, before any run starts.
  with pytest.raises(ValueError, match="run 'micro_batches=3': Invalid config: "
                     "data.datasets.interleaved.batch_size=8: must give a number of packed "
                     "rows"):
    expand(_preset("tiny"), chain([{}], sweep("train.micro_batches", [3])), "w")


def test_sweep_dry_run_prints_the_commands():
  out = subprocess.run(
      [sys.executable, "-m", "launch.sweep", "--config=experiments/flamingo.py:tiny,data=demo",
       "--sweep=experiments/sweeps.py:lr_x_every", "--workdir=/runs/lr", "--dry-run",
       "--config.train.num_steps=7"],
      capture_output=True, text=True, check=True, timeout=120).stdout
  base = ("python -m flamingo_jax.training.train --config=experiments/flamingo.py:tiny,data=demo "
          "--workdir=/runs/lr/")
  assert out.splitlines() == [
      base + "learning_rate=0.0003,every=1 --config.train.num_steps=7 "
             "--config.optimizer.learning_rate=0.0003 --config.model.xattn.every=1",
      base + "learning_rate=0.0003,every=2 --config.train.num_steps=7 "
             "--config.optimizer.learning_rate=0.0003 --config.model.xattn.every=2",
      base + "learning_rate=0.001,every=1 --config.train.num_steps=7 "
             "--config.optimizer.learning_rate=0.001 --config.model.xattn.every=1",
      base + "learning_rate=0.001,every=2 --config.train.num_steps=7 "
             "--config.optimizer.learning_rate=0.001 --config.model.xattn.every=2"]
  assert not os.path.exists("/runs/lr")  # A dry run creates nothing.


def test_sweep_run_trains_scores_and_tabulates_every_run(tmp_path):
  """A 2-run sweep, which also checks the no-data switch end to end: a run's batches lack the
  excluded dataset, yet it is scored on it."""
  base = train_small.config("two", **{"train.num_steps": 2, "train.log_every": 1})
  runs = expand(base, sweep("data.exclude", ["pairs", "interleaved"]), str(tmp_path))
  table = launcher.run_all(runs, str(tmp_path), heldout_batches=1)
  trained = {r.name: [sorted(k for k in record if k.startswith("loss/"))
                      for record in metrics.read_metrics(r.workdir)] for r in runs}
  assert trained == {"exclude=pairs": [["loss/interleaved"]] * 2,
                     "exclude=interleaved": [["loss/pairs"]] * 2}
  losses = {}
  for run in runs:
    scored = json.load(open(os.path.join(run.workdir, "heldout.json")))
    assert scored["overrides"] == run.overrides
    # What the run's own checkpoint scores, again: the record holds the scorer's exact values.
    assert scored["heldout_loss"] == heldout_losses(run.workdir, 1)
    losses[run.name] = scored["heldout_loss"]
  first, second = losses["exclude=pairs"], losses["exclude=interleaved"]
  lines = open(tmp_path / "results.md").read().splitlines()
  assert table.splitlines() == lines and lines[:2] == ["| run | interleaved | pairs |", "|---|---|---|"]
  assert lines[2] == f"| exclude=pairs | {first['interleaved']:.3f} | {first['pairs']:.3f} |"
  assert lines[3] == "| exclude=interleaved | " + " | ".join(
      f"{second[d]:.3f} ({second[d] - first[d]:+.3f})" for d in ("interleaved", "pairs")) + " |"
