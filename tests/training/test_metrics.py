"""Peak FLOP/s for MFU: the data-sheet lookup, and training on an accelerator PEAK_FLOPS lacks."""

import dataclasses
import logging

import jax
import pytest

from flamingo_jax.training import metrics
from flamingo_jax.training import train as T
from tests.configs import train_small

UNKNOWN_KIND = "Acme Tensor Engine 9000"


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What `peak_flops_per_device` reads of a jax.Device."""

  device_kind: str
  platform: str = "gpu"


@pytest.mark.parametrize("device_kind, key", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H200", "NVIDIA H200"),
    ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),  # Not the H200 SXM's figure.
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
    ("NVIDIA A100 80GB PCIe", "NVIDIA A100"),
    ("NVIDIA A10", "NVIDIA A10"),
    ("NVIDIA A10G", None),  # No NVIDIA data sheet; not the A10's.
    ("NVIDIA L4", "NVIDIA L4"),
    ("NVIDIA L40S", None),
    ("TPU v5 lite", "TPU v5 lite"),
    ("TPU v5", "TPU v5"),
])
def test_device_kinds_match_their_data_sheet_entry(device_kind, key):
  assert metrics.data_sheet_kind(device_kind) == key


def test_unknown_accelerator_has_no_peak_and_warns_once(caplog):
  metrics._warn_mfu_unavailable.cache_clear()
  with caplog.at_level(logging.WARNING):
    assert metrics.peak_flops_per_device(FakeDevice(UNKNOWN_KIND)) is None
    assert metrics.peak_flops_per_device(FakeDevice(UNKNOWN_KIND)) is None
  warnings = [r.getMessage() for r in caplog.records if "MFU unavailable" in r.getMessage()]
  assert len(warnings) == 1
  assert UNKNOWN_KIND in warnings[0] and "PEAK_FLOPS" in warnings[0]


def test_known_accelerator_and_cpu_have_a_peak():
  peak = metrics.peak_flops_per_device(FakeDevice("NVIDIA L4"))
  assert peak == (121e12, "data sheet (NVIDIA L4)")
  peak, source = metrics.peak_flops_per_device(FakeDevice("cpu", platform="cpu"))
  host_peak, derivation = metrics.nominal_cpu_flops()  # Shared by the host's CPU devices.
  assert (peak * len(jax.local_devices()), source) == (pytest.approx(host_peak), derivation)


ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
cpu MHz\t\t: 2596.132
flags\t\t: fpu avx2 fma avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
"""


@pytest.mark.parametrize("cpuinfo, cores, peak, reason", [
    (ZEN4_CPUINFO, 2, 2 * 32 * 2.596132e9, "AMD Zen 4 (family 25, model 17): 16 f32 FMA/cycle"),
    (ZEN4_CPUINFO.replace("family\t: 25", "family\t: 26"), 4, 4 * 64 * 2.596132e9,
     "AMD Zen 5"),
    ("vendor_id : GenuineIntel\ncpu family : 6\nmodel : 143\ncpu MHz : 2000.0\n"
     "flags : avx2 fma avx512f\n", 8, 8 * 64 * 2.0e9, "AVX-512 with two 512-bit FMA units"),
    ("vendor_id : GenuineIntel\ncpu MHz : 3000.0\nflags : avx2 fma\n", 1, 32 * 3.0e9, "AVX2"),
])
def test_nominal_cpu_peak_is_cores_x_flops_per_cycle_x_clock(cpuinfo, cores, peak, reason):
  value, derivation = metrics.nominal_cpu_flops(cpuinfo, cores)
  assert value == pytest.approx(peak, rel=1e-12)
  assert reason in derivation and f"{cores} cores" in derivation


def test_nominal_cpu_peak_needs_the_clock():
  with pytest.raises(ValueError, match="cpu MHz"):
    metrics.nominal_cpu_flops("vendor_id : AuthenticAMD\nflags : avx2 fma\n", 2)


def _no_update(config, setup, loss_weights):
  """In place of `training.setup.jit_train_step`: a step that changes nothing and compiles nothing
  (this test is about the logs)."""
  return lambda state, frozen, batches: (state, {"loss": 1.0, "grad_norm": 1.0})


@pytest.mark.parametrize("device_kind", [UNKNOWN_KIND, "cpu"])
def test_training_logs_mfu_only_with_a_known_peak(device_kind, tmp_path, monkeypatch, capsys):
  device = FakeDevice(device_kind, platform="cpu" if device_kind == "cpu" else "gpu")
  monkeypatch.setattr(T, "peak_flops_per_device", lambda: metrics.peak_flops_per_device(device))
  monkeypatch.setattr(T, "jit_train_step", _no_update)
  monkeypatch.setattr(T, "measured_cpu_flops", lambda: metrics.nominal_cpu_flops()[0] / 2)
  releases = []  # Freed compiler memory goes back to the OS once, after the first update.
  monkeypatch.setattr(T, "release_freed_host_memory", lambda: releases.append(1))
  config = train_small.config("one", **{"train.num_steps": 2, "train.log_every": 1})
  T.train(config, str(tmp_path), devices=jax.devices()[:1])
  records = metrics.read_metrics(str(tmp_path))
  out = capsys.readouterr().out
  assert [r["step"] for r in records] == [1, 2] and "step 2/2" in out and releases == [1]
  if device_kind == "cpu":  # MFU against the nominal peak; matmul efficiency against our own rate.
    assert all(r["matmul_efficiency"] == pytest.approx(2 * r["mfu"]) for r in records)
    assert "MFU against nominal: " in out and "matmul_efficiency" in out
  else:  # Absent, not 0 or NaN.
    assert all("mfu" not in r and "examples_per_s" in r for r in records) and "mfu" not in out
