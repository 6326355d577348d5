"""Impossible configs fail at config time with the field's name; overrides work from the CLI."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_config


@pytest.mark.parametrize("override, field", [
    ({"xattn.every": 0}, "model.xattn.every"),
    ({"xattn.every": -2}, "model.xattn.every"),
    ({"xattn.offset": 2}, "model.xattn.offset"),
    ({"lm.num_heads": 5}, "model.lm.num_heads"),
    ({"lm.num_kv_heads": 3}, "model.lm.num_kv_heads"),
    ({"vision.num_heads": 3}, "model.vision.num_heads"),
    ({"vision.patch_size": 7}, "model.vision.patch_size"),
    ({"resampler.num_latents": 0}, "model.resampler.num_latents"),
    ({"xattn.ffw_activation": "swish"}, "model.xattn.ffw_activation"),
    ({"xattn.gate_shape": "matrix"}, "model.xattn.gate_shape"),
    ({"execution.remat_policy": "some"}, "model.execution.remat_policy"),
    ({"execution.dtype": "int8"}, "model.execution.dtype"),
    ({"lm.rope_scaling.kind": "yarn"}, "model.lm.rope_scaling.kind"),
    ({"lm.rope_scaling.kind": "linear", "lm.rope_scaling.factor": 0.0},
     "model.lm.rope_scaling.factor"),
    ({"lm.rope_scaling.kind": "llama3", "lm.rope_scaling.high_freq_factor": 0.5},
     "model.lm.rope_scaling.high_freq_factor"),
    ({"xattn.norm": "batch"}, "model.xattn.norm"),
    ({"xattn.alpha_init": "uniform"}, "model.xattn.alpha_init"),
    ({"xattn.alpha_init_std": -1.0}, "model.xattn.alpha_init_std"),
    ({"xattn.ffw_dim": -1}, "model.xattn.ffw_dim"),
    ({"image_token": 10_000}, "model.image_token"),
    ({"eoc_token": 512}, "model.eoc_token"),  # V = 512: the id <image> already has.
    ({"num_extra_tokens": 1}, "model.eoc_token"),  # No row left for <EOC> = V + 1.
])
def test_impossible_config_names_the_field(override, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    tiny_config(**override)


def test_unknown_field_is_named():
  from experiments import flamingo
  from flamingo_jax.config import FlamingoConfig
  config = flamingo.get_config("tiny").model.to_dict()
  config["lm"]["num_layer"] = 3
  with pytest.raises(ValueError, match=r"model\.lm\.num_layer"):
    FlamingoConfig.from_dict(config)


def _summary(*args):
  return subprocess.run([sys.executable, "-m", "flamingo_jax.summary",
                         "--config", "experiments/flamingo.py:tiny", *args],
                        capture_output=True, text=True, timeout=120)


def test_command_line_overrides_and_errors():
  base = json.loads(_summary("--json").stdout)
  deeper = json.loads(_summary("--json", "--config.model.lm.num_layers=6").stdout)
  per_layer = (deeper["lm"]["frozen"] - base["lm"]["frozen"]) / 2
  assert per_layer > 0
  assert deeper["xattn"]["trainable"] == base["xattn"]["trainable"] * 3 // 2  # 3 blocks, not 2.
  table = _summary()
  assert table.returncode == 0 and "resampler" in table.stdout and "total" in table.stdout
  bad = _summary("--config.model.xattn.every=0")
  assert bad.returncode != 0 and "model.xattn.every" in bad.stderr
