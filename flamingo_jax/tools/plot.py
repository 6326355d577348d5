r"""Plots a run's logs as one PNG: tanh(alpha) of every gated block over training (the paper's gate
plot), |tanh(alpha)| of each block at the end of training by the depth of the LM layer it precedes
(attention and dense gates side by side, the paper's Figure 6 view), and the loss curves.

  python -m flamingo_jax.tools.plot --workdir /tmp/run [--out /tmp/run/training.png]

`plot_shots` draws a few-shot evaluation's results.json (flamingo_jax/evaluation/evaluate.py) as
shot curves: each task's score by number of shots with its 95% interval, and chance where defined.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from flamingo_jax.training.metrics import read_metrics
from flamingo_jax.weights import store


def final_gates_by_depth(workdir: str, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(LM layer index each gated block precedes [K], |tanh(alpha)| of its attention gate [K], of its
  dense gate [K]) at `record` (a metrics line). Depths come from the run's recorded placement
  (`model.xattn.every` / `offset`, run.json); without a record, the block index."""
  attn, ffw = (np.abs(np.asarray(record.get(f"gates/{g}", []), float)) for g in ("attn", "ffw"))
  run = store.read_run_record(workdir)
  xattn = run["config"]["model"]["xattn"] if run else {"every": 1, "offset": 0}
  return xattn["offset"] + xattn["every"] * np.arange(len(attn)), attn, ffw


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_shots(results: dict, out: str) -> str:
  """One panel per task of `results` (evaluate.evaluate's dict): score against shots (evenly spaced,
  labelled with the shot counts) with 95% interval bars, and a dashed line at chance; writes `out`."""
  from flamingo_jax.evaluation.runner import METRIC_NAMES
  plt = _pyplot()
  tasks = results["tasks"]
  fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
  for ax, (name, task) in zip(axes[0], tasks.items()):
    shots = sorted(task["scores"], key=int)
    values = np.array([task["scores"][k] for k in shots])
    low, high = np.array([task["intervals"][k] for k in shots]).T
    x = np.arange(len(shots))
    ax.errorbar(x, values, yerr=[values - low, high - values], marker="o", capsize=4)
    if task.get("chance") is not None:
      ax.axhline(task["chance"], color="grey", linestyle="--", label="chance")
      ax.legend(fontsize=8)
    ax.set(title=f"{name} ({task['num_queries']} queries)", xlabel="shots", xticks=x,
           xticklabels=shots, ylabel=METRIC_NAMES[task["metric"]])
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def plot_training(workdir: str, out: str) -> str:
  plt = _pyplot()
  records = read_metrics(workdir)
  if not records:
    raise ValueError(f"{workdir}/metrics.jsonl has no records yet.")
  steps = np.array([r["step"] for r in records])
  fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
  for ax, gate in zip(axes[:2], ("attn", "ffw")):
    values = np.array([r.get(f"gates/{gate}", []) for r in records])
    if values.size:
      colours = plt.cm.viridis(np.linspace(0, 1, values.shape[1]))
      for layer in range(values.shape[1]):
        ax.plot(steps, values[:, layer], color=colours[layer], label=f"block {layer}")
      ax.legend(fontsize=7, ncol=2)
    ax.set(title=f"tanh(alpha) of the {gate} gates", xlabel="step")
  depths, attn, ffw = final_gates_by_depth(workdir, records[-1])
  width = 0.4 * (depths[1] - depths[0] if len(depths) > 1 else 1)
  axes[2].bar(depths - width / 2, attn, width, label="attention")
  axes[2].bar(depths + width / 2, ffw, width, label="dense")
  axes[2].set(title=f"|tanh(alpha)| at step {steps[-1]}", xlabel="LM layer depth", xticks=depths)
  axes[2].legend(fontsize=8)
  losses = sorted(k for k in records[-1] if k == "loss" or k.startswith("loss/"))
  for name in losses:
    axes[3].plot(steps, [r.get(name, np.nan) for r in records], label=name)
  axes[3].set(title="training loss", xlabel="step", yscale="log")
  axes[3].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  print(plot_training(workdir, flags.FLAGS.out or os.path.join(workdir, "training.png")))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A training workdir (reads its metrics.jsonl).", required=True)
  flags.DEFINE_string("out", None, "PNG path (default: <workdir>/training.png).")
  app.run(main)
