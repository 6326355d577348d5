"""The quickstart's three stages: what each one reads and with which batch (no training here; the
whole quickstart runs in benchmarks/quickstart.py)."""

import types

import pytest

from experiments import flamingo
from flamingo_jax.config import Config
from flamingo_jax.tools import quickstart
from flamingo_jax.tools.quickstart import stage_config


def _demo() -> Config:
  return Config.from_dict(flamingo.get_config("tiny,data=demo,corpus=/corpus"))


def _read(stage: Config) -> dict[str, int]:
  return {name: spec.batch_size for name, spec in stage.data.selected().items()}


def test_each_stage_reads_its_datasets_with_its_batches():
  config = _demo()
  contrastive = stage_config(config, "contrastive", "/run")
  assert (_read(contrastive), contrastive.train.num_steps) == ({"pairs": 64}, 1200)
  assert contrastive.optimizer.learning_rate == 2e-3
  lm = stage_config(config, "lm", "/run")
  assert _read(lm) == {"interleaved": 8, "pairs": 32, "video": 4}
  assert (lm.train.num_steps, lm.optimizer.learning_rate) == (500, 5e-3)
  both = stage_config(config, "flamingo", "/run")
  assert _read(both) == {"interleaved": 8, "pairs": 32, "video": 4}
  assert (both.train.num_steps, both.optimizer.learning_rate) == (1200, 2e-3)
  assert (both.init.vision_checkpoint, both.init.lm_checkpoint) == ("/run/vision/export/vision",
                                                                    "/run/lm/export/lm")


def test_lm_batch_sizes_apply_to_the_lm_stage_only():
  config = _demo().replace({"quickstart.lm_batch_sizes": {"video": 32}})
  assert _read(stage_config(config, "lm", "/run"))["video"] == 32
  assert _read(stage_config(config, "flamingo", "/run"))["video"] == 4


def test_lm_batch_sizes_must_name_a_dataset_and_a_positive_size():
  with pytest.raises(ValueError, match="quickstart.lm_batch_sizes names 'm3w', which is not"):
    stage_config(_demo().replace({"quickstart.lm_batch_sizes": {"m3w": 32}}), "lm", "/run")
  with pytest.raises(ValueError, match="quickstart.lm_batch_sizes.pairs=0: must be > 0"):
    _demo().replace({"quickstart.lm_batch_sizes": {"pairs": 0}})


def test_the_binding_stages_read_the_naming_pages_alone():
  config = Config.from_dict(flamingo.get_config("tiny,data=demo,stages=binding"))
  lm = stage_config(config, "lm", "/run")
  assert (_read(lm), lm.train.num_steps) == ({"naming_words": 32}, 1500)
  both = stage_config(config, "flamingo", "/run")
  assert (_read(both), both.train.num_steps) == ({"naming_words": 8, "naming_images": 8}, 800)
  assert both.optimizer.learning_rate == 1e-3
  assert _read(stage_config(config, "contrastive", "/run")) == {"pairs": 64}
  with pytest.raises(ValueError, match="stages=binding needs data=demo"):
    flamingo.get_config("tiny,stages=binding")


def test_a_stage_stopped_by_sigterm_stops_the_command(monkeypatch, tmp_path):
  trained = []

  def train(stage, directory):  # The LM stage stops at step 120 of 500, as after SIGTERM.
    trained.append(stage.task)
    return types.SimpleNamespace(step=stage.train.num_steps if stage.task == "contrastive" else 120)

  monkeypatch.setattr(quickstart.trainer, "train", train)
  with pytest.raises(SystemExit, match="lm stopped at step 120 of 500 .SIGTERM.; run the same"):
    quickstart.run_stages(_demo(), str(tmp_path))
  assert trained == ["contrastive", "lm"]  # The Flamingo stage never started.
