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
  assert peak > 0 and source == "measured f32 matmul"


def _no_update(config, setup, loss_weights):
  """In place of `training.setup.jit_train_step`: a step that changes nothing and compiles nothing
  (this test is about the logs)."""
  return lambda state, frozen, batches: (state, {"loss": 1.0, "grad_norm": 1.0})


@pytest.mark.parametrize("device_kind", [UNKNOWN_KIND, "cpu"])
def test_training_logs_mfu_only_with_a_known_peak(device_kind, tmp_path, monkeypatch, capsys):
  device = FakeDevice(device_kind, platform="cpu" if device_kind == "cpu" else "gpu")
  monkeypatch.setattr(T, "peak_flops_per_device", lambda: metrics.peak_flops_per_device(device))
  monkeypatch.setattr(T, "jit_train_step", _no_update)
  config = train_small.config("one", **{"train.num_steps": 2, "train.log_every": 1})
  T.train(config, str(tmp_path), devices=jax.devices()[:1])
  records = metrics.read_metrics(str(tmp_path))
  out = capsys.readouterr().out
  assert [r["step"] for r in records] == [1, 2] and "step 2/2" in out
  if device_kind == "cpu":  # The measured matmul rate stands in for a data sheet.
    assert all(r["mfu"] > 0 for r in records) and "(peak: measured f32 matmul)" in out
  else:  # Absent, not 0 or NaN.
    assert all("mfu" not in r and "examples_per_s" in r for r in records) and "mfu" not in out
