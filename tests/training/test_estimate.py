"""The calibrated step estimate end to end: reduced-depth compiles of a tiny LM on v5e:2x2."""

import pytest

from experiments import flamingo as presets
from experiments import llama
from flamingo_jax.config import Config
from flamingo_jax.training import aot, estimate
from launch import aot_check


def _tiny_lm():
  config = Config.from_dict(presets.get_config("tiny")).replace(
      {"task": "lm", "mesh.data": 1, "mesh.fsdp": 4, "data.exclude": "pairs,video"})
  return config


def test_reduced_depths_keep_the_gated_block_pattern():
  config = Config.from_dict(presets.get_config("flamingo_9b"))  # xattn.every = 4.
  assert estimate.reduced_depths(config) == [(4, 1), (8, 1), (4, 2)]
  assert estimate.full_depth(config) == (40, 15)
  lm = Config.from_dict(llama.get_config("llama2_70b"))
  assert estimate.reduced_depths(lm, 2) == [(1,), (2,)] and estimate.full_depth(lm) == (80,)
  reduced = estimate.reduced_config(config, (8, 2))
  assert (reduced.model.lm.num_layers, reduced.model.vision.num_layers) == (8, 2)
  assert not reduced.model.execution.scan_layers


def test_tiny_lm_estimate_is_the_extrapolation_of_its_own_compiles():
  config = _tiny_lm()
  report = aot_check.check(config, "v5e:2x2", with_estimate=True, compiles=2)
  e, layers = report["estimate"], config.model.lm.num_layers
  one, two = e["per_compile"]
  assert [one["depth"], two["depth"]] == [[1], [2]] and e["full_depth"] == [layers]
  slope = two["compute_s"] - one["compute_s"]
  assert e["compute_s"] == pytest.approx(one["compute_s"] + slope * (layers - 1), rel=1e-9)
  # No loops remain unrolled; Pallas kernels (splash attention on TPU), if any, analytic.
  assert one["loop_s"] == 0
  assert one["compute_s"] == pytest.approx(one["compiler_s"] + one["kernel_s"], rel=1e-12)
  # FSDP over 4 chips: the weights are gathered over ICI.
  assert one["comm_async_s"] + one["comm_sync_s"] > 0 and e["comm_bytes_per_chip"] > 0
  assert e["step_s"] == pytest.approx(e["compute_s"] + e["exposed_comm_s"], rel=1e-12)
  spec = config.data.datasets["interleaved"]
  assert e["tokens_per_s_per_chip"] == pytest.approx(
      spec.batch_size * spec.seq_len / e["step_s"] / 4, rel=1e-9)
  peak = aot.CHIPS["v5e"].peak_flops * 4
  assert e["mfu_compute"] == pytest.approx(e["model_flops_per_step"] / (e["compute_s"] * peak))
  text = aot.format_report(report)
  assert "compute only" in text and "with exposed communication" in text
  assert "tokens/s/chip" in text and "frozen fsdp" in text and "method:" in text
