"""Training logs: a JSONL file and TensorBoard event files, plus peak FLOP/s for MFU.

Each logged step is one JSON line {"step": int, <name>: float or [floats], ...} in
`<workdir>/metrics.jsonl`; the same scalars go to TensorBoard under `<workdir>/tensorboard` (vector
metrics such as `gates/attn` are written one scalar per gated block: `gates/attn/0`, ...). Only
process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measured_cpu_flops(size: int = 1024, seconds: float = 0.5) -> float:
  """This host's f32 matmul FLOP/s, measured on [size, size] products for about `seconds`."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(matmul(a))
    runs += 1
  return 2 * size ** 3 * runs / (time.perf_counter() - start)


def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s of one local device, where the figure comes from)."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return measured_cpu_flops() / len(jax.local_devices()), "measured f32 matmul"
  for kind, peak in PEAK_FLOPS.items():
    if device.device_kind.startswith(kind):
      return peak, f"data sheet ({kind})"
  raise ValueError(f"No peak FLOP/s known for device kind {device.device_kind!r}; add it to "
                   "flamingo_jax.training.metrics.PEAK_FLOPS.")


class MetricWriter:
  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter  # Imported only where used: process 0.
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float | np.ndarray]) -> None:
    if not self._active:
      return
    record = {"step": int(step)}
    for name, value in metrics.items():
      value = np.asarray(value)
      if value.ndim == 0:
        record[name] = float(value)
        self._tensorboard.add_scalar(name, float(value), step)
      else:
        record[name] = [float(v) for v in value.ravel()]
        for i, v in enumerate(value.ravel()):
          self._tensorboard.add_scalar(f"{name}/{i}", float(v), step)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """The JSONL records of a run, in order; a run resumed from an earlier step keeps the last record
  written for each step."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]
