r"""Plots a run's logs: tanh(alpha) of every gated block over training (the paper's gate plot) and
the loss curves, as one PNG.

  python -m flamingo_jax.tools.plot --workdir /tmp/run [--out /tmp/run/training.png]
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from flamingo_jax.training.metrics import read_metrics


def plot_training(workdir: str, out: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  if not records:
    raise ValueError(f"{workdir}/metrics.jsonl has no records yet.")
  steps = np.array([r["step"] for r in records])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for ax, gate in zip(axes[:2], ("attn", "ffw")):
    values = np.array([r.get(f"gates/{gate}", []) for r in records])
    if values.size:
      colours = plt.cm.viridis(np.linspace(0, 1, values.shape[1]))
      for layer in range(values.shape[1]):
        ax.plot(steps, values[:, layer], color=colours[layer], label=f"block {layer}")
      ax.legend(fontsize=7, ncol=2)
    ax.set(title=f"tanh(alpha) of the {gate} gates", xlabel="step")
  losses = sorted(k for k in records[-1] if k == "loss" or k.startswith("loss/"))
  for name in losses:
    axes[2].plot(steps, [r.get(name, np.nan) for r in records], label=name)
  axes[2].set(title="training loss", xlabel="step", yscale="log")
  axes[2].legend(fontsize=8)
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
