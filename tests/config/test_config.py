"""Impossible configs fail at config time with the field's name; overrides work from the CLI."""

import json
import re
import subprocess
import sys

import pytest

from experiments import evaluation, flamingo
from flamingo_jax.config import Config, EvaluationConfig, FlamingoConfig
from tests.builders import tiny_config


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
  config = flamingo.get_config("tiny").model.to_dict()
  config["lm"]["num_layer"] = 3
  with pytest.raises(ValueError, match=r"model\.lm\.num_layer"):
    FlamingoConfig.from_dict(config)


@pytest.mark.parametrize("override, message", [
    ({"task": "caption"}, "task='caption': must be one of flamingo, lm, contrastive"),
    ({"seed": 1.5}, "seed=1.5: must be an integer"),
    ({"mesh.fsdp": 0}, "mesh.fsdp=0: must be a positive number of devices or -1"),
    ({"mesh.data": -1, "mesh.tensor": -1}, "mesh.tensor=-1: only one mesh axis may be -1"),
    ({"data.source": "webdataset"}, "data.source='webdataset': must be one of synthetic, arrayrecord"),
    ({"data.accumulation": "mean"}, "data.accumulation='mean'"),
    ({"data.datasets.pairs.batch_size": 0}, "data.datasets.pairs.batch_size=0: must be > 0"),
    ({"data.datasets.video.loss_weight": -0.1}, "data.datasets.video.loss_weight=-0.1: must be >= 0"),
    ({"data.datasets.interleaved.p_next": 2.0}, "data.datasets.interleaved.p_next=2.0"),
    ({"data.exclude": "m3w"}, "data.exclude='m3w': names unknown dataset"),
    ({"data.source": "arrayrecord"}, "data.tokenizer='': data.source=arrayrecord needs"),
    ({"optimizer.learning_rate": 0.0}, "optimizer.learning_rate=0.0: must be > 0"),
    ({"optimizer.b2": 1.0}, "optimizer.b2=1.0: must be in [0, 1)"),
    ({"optimizer.schedule": "cosine", "optimizer.decay_steps": 5},
     "optimizer.decay_steps=5: must exceed optimizer.warmup_steps=10"),
    ({"train.num_steps": 0}, "train.num_steps=0: must be > 0"),
    ({"train.frozen_dtype": "int8"}, "train.frozen_dtype='int8'"),
    ({"train.micro_batches": 3}, "data.datasets.interleaved.batch_size=8: must give a number of "
                                 "packed rows"),
    ({"data.datasets.pairs.pack": 3}, "data.datasets.pairs.batch_size=8: must be a multiple of "
                                      "data.datasets.pairs.pack=3"),
    ({"train.lm_pass": "joint"}, "data.datasets.pairs.pack=1: gives rows of 12 tokens"),
    ({"data.datasets.pairs.pack": 2, "data.datasets.pairs.row_len": 20},
     "data.datasets.pairs.row_len=20: must hold pack * seq_len = 2 * 12 tokens"),
    ({"data.datasets.pairs.row_len": 30}, "data.datasets.pairs.row_len=30: pads packed rows only"),
    ({"task": "contrastive", "train.micro_batches": 2}, "train.micro_batches=2: must be 1 for "
                                                        "task=contrastive"),
    ({"init.flamingo_checkpoint": "/a", "init.lm_checkpoint": "/b"},
     "init.flamingo_checkpoint='/a': holds the towers too"),
    ({"quickstart.heldout_batches": 0}, "quickstart.heldout_batches=0: must be > 0"),
    ({"model.lm.num_heads": 5}, "model.lm.num_heads=5: must divide model.lm.width=64"),
])
def test_a_wrong_value_in_any_section_names_its_full_field(override, message):
  base = Config.from_dict(flamingo.get_config("tiny"))
  with pytest.raises(ValueError, match=re.escape(message)):
    base.replace(override)


@pytest.mark.parametrize("override, message", [
    ({"shots": (0, -4)}, "shots=(0, -4): must be one or more shot counts >= 0"),
    ({"sampling.num_beams": 0}, "sampling.num_beams=0: must be > 0"),
    ({"sampling.top_p": 1.5}, "sampling.top_p=1.5: must be in (0, 1]"),
    ({"tasks.coco.kind": "detection"}, "tasks.coco.kind='detection'"),
    ({"tasks.vqav2.selection": "nearest"}, "tasks.vqav2.selection='nearest'"),
    ({"tasks.coco.support_size": 0}, "tasks.coco.support_size=0: must be > 0"),
    ({"tasks.coco.tfds_name": ""}, "tasks.coco.tfds_name='': source=tfds needs"),
])
def test_a_wrong_evaluation_value_names_its_full_field(override, message):
  base = EvaluationConfig.from_dict(evaluation.get_config("paper,tasks=coco+vqav2"))
  with pytest.raises(ValueError, match=re.escape(message)):
    base.replace(override)


def test_preset_arguments_are_keys():
  assert Config.from_dict(flamingo.get_config("tiny,data=demo")).data.source == "arrayrecord"
  for arg, message in (("tiny,demo", "'demo' is not key=value"),
                       ("tiny,data=web", "data='web': use synthetic or demo"),
                       ("tiny,dataset=demo", "known: data=...")):
    with pytest.raises(ValueError, match=re.escape(message)):
      flamingo.get_config(arg)
  assert list(EvaluationConfig.from_dict(evaluation.get_config("paper,tasks=coco+okvqa")).tasks) == [
      "coco", "okvqa"]


def test_the_trainer_rejects_a_wrong_value_before_it_starts(tmp_path):
  run = subprocess.run([sys.executable, "-m", "flamingo_jax.training.train",
                        "--config=experiments/flamingo.py:tiny", f"--workdir={tmp_path / 'run'}",
                        "--config.data.datasets.pairs.batch_size=0"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      "error: Invalid config: data.datasets.pairs.batch_size=0: must be > 0.")
  assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()


def _summary(*args):
  return subprocess.run([sys.executable, "-m", "flamingo_jax.tools.summary",
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
