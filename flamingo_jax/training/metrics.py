"""Training logs: a JSONL file and TensorBoard event files, plus peak FLOP/s for MFU (data sheets for
accelerators, a nominal peak derived from /proc/cpuinfo for CPUs).

Each logged step is one JSON line {"step": int, <name>: float or [floats], ...} in
`<workdir>/metrics.jsonl`; the same scalars go to TensorBoard under `<workdir>/tensorboard` (vector
metrics such as `gates/attn` are written one scalar per gated block: `gates/attn/0`, ...). Only
process 0 writes.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Dense (not sparse) bf16 peak FLOP/s per chip, from the vendors' data sheets. A key is a device
# kind (`jax.Device.device_kind`) or its start up to a space or dash ("NVIDIA A100" covers
# "NVIDIA A100-SXM4-80GB", not "NVIDIA A10"); the longest matching key wins (`data_sheet_kind`).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    # NVIDIA's data sheets give BF16 Tensor Core TFLOPS "with sparsity"; dense is half of: H100 SXM
    # 1,979, H100 PCIe 1,513, H100 NVL 1,671, H200 SXM 1,979, H200 NVL 1,671, A100 (SXM4 and PCIe,
    # 40 and 80 GB) 624, A10 250, L4 242. The A10G (AWS) has no NVIDIA data sheet: not listed.
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # H200 SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100": 312e12,
    "NVIDIA A10": 125e12,
    "NVIDIA L4": 121e12,
}


def measured_cpu_flops(size: int = 1024, seconds: float = 0.5) -> float:
  """This host's f32 matmul FLOP/s, measured on [size, size] products for about `seconds`: a rate
  of our own software, the denominator of `matmul_efficiency`, never of MFU."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(matmul(a))
    runs += 1
  return 2 * size ** 3 * runs / (time.perf_counter() - start)


# f32 FLOP per cycle per core of the fused multiply-add units: FMA pipes x f32 lanes per pipe x 2.
# AMD by (family, first model, last model), from AMD's Software Optimization Guides: Zen 2, 3 and 4
# have two 256-bit FMA pipes (Zen 4 runs AVX-512 as two 256-bit halves), Zen 5 two 512-bit pipes
# (server and desktop parts), Zen 1 two 128-bit pipes.
AMD_FLOPS_PER_CYCLE = {(23, 0x00, 0x2F): ("Zen", 16), (23, 0x30, 0xFF): ("Zen 2", 32),
                       (25, 0x00, 0x0F): ("Zen 3", 32), (25, 0x10, 0x1F): ("Zen 4", 32),
                       (25, 0x20, 0x5F): ("Zen 3", 32), (25, 0x60, 0xAF): ("Zen 4", 32),
                       (26, 0x00, 0xFF): ("Zen 5", 64)}


def _cpu_flops_per_cycle(info: Mapping[str, str]) -> tuple[int, str]:
  """(f32 FLOP per cycle per core, the reason) from one /proc/cpuinfo processor block. Intel cores
  with AVX-512 are taken to have two 512-bit FMA units (Xeon Scalable Gold/Platinum and later), with
  AVX2 and FMA two 256-bit units (Haswell and later)."""
  family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
  if info.get("vendor_id") == "AuthenticAMD":
    for (fam, first, last), (name, flops) in AMD_FLOPS_PER_CYCLE.items():
      if family == fam and first <= model <= last:
        return flops, f"AMD {name} (family {family}, model {model}): {flops // 2} f32 FMA/cycle"
  flags = set(info.get("flags", "").split())
  if "avx512f" in flags:
    return 64, "AVX-512 with two 512-bit FMA units: 32 f32 FMA/cycle"
  if {"avx2", "fma"} <= flags:
    return 32, "AVX2 with two 256-bit FMA units: 16 f32 FMA/cycle"
  return 8, "SSE, one 128-bit multiply and one add per cycle: 8 f32 FLOP/cycle"


def nominal_cpu_flops(cpuinfo: str | None = None, cores: int | None = None) -> tuple[float, str]:
  """(nominal f32 peak FLOP/s of this host's cores, its derivation): cores x FLOP per cycle x the
  clock /proc/cpuinfo reports ("cpu MHz", the nominal or current clock; turbo can exceed it, and a
  step can then exceed an MFU of 1 by that factor). `cpuinfo`: the file's text, for tests."""
  if cpuinfo is None:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpuinfo = f.read()
  blocks = [dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            for block in cpuinfo.strip().split("\n\n")]
  info = {k.strip(): v.strip() for k, v in blocks[0].items()}
  if "cpu MHz" not in info:
    raise ValueError("/proc/cpuinfo gives no 'cpu MHz': the nominal CPU peak needs the clock.")
  cores = cores or len(os.sched_getaffinity(0))
  per_cycle, reason = _cpu_flops_per_cycle(info)
  ghz = float(info["cpu MHz"]) / 1e3
  return cores * per_cycle * ghz * 1e9, (
      f"nominal: {cores} cores x {per_cycle} f32 FLOP/cycle ({reason}) x {ghz:.3f} GHz "
      f"(/proc/cpuinfo) = {cores * per_cycle * ghz:.1f} GFLOP/s")


def data_sheet_kind(device_kind: str) -> str | None:
  """The PEAK_FLOPS key of `device_kind` (see PEAK_FLOPS), or None when none matches."""
  matches = [key for key in PEAK_FLOPS
             if device_kind == key or device_kind.startswith((f"{key} ", f"{key}-"))]
  return max(matches, key=len, default=None)


@functools.cache
def _warn_mfu_unavailable(device_kind: str) -> None:
  """Warns once per process and device kind."""
  logging.warning("MFU unavailable: no peak FLOP/s known for device kind %r, so MFU is not logged. "
                  "Add its dense bf16 peak (from the vendor's data sheet) to "
                  "flamingo_jax.training.metrics.PEAK_FLOPS.", device_kind)


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str] | None:
  """(peak FLOP/s of `device`, default the first local one; where the figure comes from), or None
  for an accelerator missing from PEAK_FLOPS (a warning says so, once): MFU is then not logged."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    peak, derivation = nominal_cpu_flops()
    return peak / len(jax.local_devices()), derivation
  kind = data_sheet_kind(device.device_kind)
  if kind is None:
    _warn_mfu_unavailable(device.device_kind)
    return None
  return PEAK_FLOPS[kind], f"data sheet ({kind})"


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
