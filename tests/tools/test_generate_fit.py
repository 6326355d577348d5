"""The serving fit check (flamingo_jax/tools/generate_fit.py, `launch.aot_check --mode generate`):
the prefill and decode step compiled for a TPU slice."""

import math

import pytest

from experiments import flamingo as presets
from flamingo_jax.config import Config
from flamingo_jax.tools import generate_fit
from flamingo_jax.training import aot
from launch import aot_check

SHAPE = generate_fit.ServeShape(batch=4, context=64, prompt=16, images=2)


def _tiny():
  return Config.from_dict(presets.get_config("tiny")).replace(
      {"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2})


def test_tiny_serving_on_v5e_2x2_memory_and_largest_batch():
  report = generate_fit.fit_report(_tiny(), aot.parse_topology("v5e:2x2"), SHAPE,
                                   with_estimate=False)
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and report["fits"]
  # The self-attention cache per chip: 4 LM layers x (keys, values) x 2 of the 4 rows x 64 slots x
  # 1 of the 2 key/value heads x 16 (head width) x 4 bytes (float32).
  assert report["cache_gib"] * 2 ** 30 == 4 * 2 * 2 * 64 * 1 * 16 * 4
  hbm = 16 * 2 ** 30
  compiled = report["batches_compiled"]
  assert list(compiled)[:2] == [4, 8] and compiled[4] == report["decode_total_gib"]
  # The largest batch is the largest compiled one that fits; it splits over the 2 batch devices,
  # and the search compiled a larger one that does not fit.
  best = report["max_batch_at_context"]
  assert best % 2 == 0 and best > 8
  assert report["max_batch_decode_total_gib"] == compiled[best] <= 16
  assert best == max(b for b, gib in compiled.items() if gib <= 16) < max(compiled)
  # The reported line goes through the two largest compiles that fit.
  fixed, per_row = report["decode_fixed_gib"] * 2 ** 30, report["decode_gib_per_row"] * 2 ** 30
  for batch in sorted(b for b, gib in compiled.items() if gib <= 16)[-2:]:
    assert fixed + batch * per_row == pytest.approx(compiled[batch] * 2 ** 30, rel=1e-9)
  assert report["max_context_at_batch"] == math.floor((hbm - fixed) / (4 * per_row / 64))


def test_the_cli_checks_shapes_and_names_what_to_change(capsys):
  with pytest.raises(ValueError, match="--prompt=64 must be below --context=64"):
    generate_fit.ServeShape(batch=4, context=64, prompt=64)
  with pytest.raises(ValueError, match=r"--batch=3 must split over mesh.data x mesh.fsdp = 2"):
    aot_check.check_generate(_tiny(), "v5e:2x2", generate_fit.ServeShape(3, 64, 16, 2))
  with pytest.raises(ValueError, match="mesh.tensor=4 must divide model.lm.num_kv_heads=2"):
    aot_check.check_generate(_tiny().replace({"mesh.fsdp": 1, "mesh.tensor": 4}), "v5e:2x2", SHAPE)
  with pytest.raises(RuntimeError, match="cannot compile ahead of time for a GPU"):
    aot_check.check_generate(_tiny(), "h100", SHAPE)


@pytest.mark.parametrize("rounds", [1, 2])
def test_the_batch_search_doubles_where_memory_does_not_grow(monkeypatch, rounds):
  # Compiled decode memory (GiB) by batch, as XLA gave Flamingo-80B on v5e-32: less at 32 rows than
  # at 16 (the compiler changed its layouts), so the first line has no slope to solve.
  table = {16: 15.7, 32: 15.2, 64: 15.1 if rounds == 1 else 15.9, 68: 16.1}
  monkeypatch.setattr(generate_fit, "_compiled_memory", lambda programs, shape, with_prefill: {
      "decode": {"total": table[shape.batch] * 2 ** 30}})
  shape = generate_fit.ServeShape(batch=16, context=2048, prompt=1024, images=8)
  found = generate_fit.largest_batch(None, shape, table[16] * 2 ** 30, 16 * 2 ** 30, step=2,
                                     rounds=rounds)
  assert found["max_batch_at_context"] == 64
  if rounds == 1:  # 32 -> 64 still shrinks: no line, no context.
    assert list(found["batches_compiled"]) == [16, 32, 64]
    assert found["max_context_at_batch"] is None
  else:  # The line through 32 and 64 (14.5 GiB + 0.021875 per row) points at 68, over 16 GiB.
    assert list(found["batches_compiled"]) == [16, 32, 64, 68]
    assert found["decode_gib_per_row"] == pytest.approx(0.021875, rel=1e-12)
    assert found["max_context_at_batch"] == math.floor(1.5 / (16 * 0.021875 / 2048))
