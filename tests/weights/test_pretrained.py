"""Self-describing runs: the record a run leaves, `load_trained` from the workdir alone, and the
fingerprints that catch a frozen tower changed since training (flamingo_jax/weights/pretrained.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import flamingo
from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.training.optimizer import make_optimizer
from flamingo_jax.training.step import TrainState
from flamingo_jax.weights import pretrained, store
from flamingo_jax.weights import tree as ptree
from tests.builders import init_params


def _run(tmp_path, vision_seed=1):
  """A tiny Flamingo run as the trainer leaves it: its vision tower from an export (made from
  `vision_seed`), its record, and one checkpoint of the trainable tree."""
  vision = str(tmp_path / "vision_export")
  config = Config.from_dict(flamingo.get_config("tiny")).replace({"init.vision_checkpoint": vision})
  store.save_params(vision, init_params(config.model, seed=vision_seed)["vision"])
  frozen, trainable = ptree.split(init_params(config.model, seed=config.seed))
  frozen = {**frozen, "vision": init_params(config.model, seed=vision_seed)["vision"]}
  run = str(tmp_path / "run")
  pretrained.record_run(run, config, frozen)
  checkpointer = store.Checkpointer(run, keep=1)
  checkpointer.save(3, TrainState(jnp.asarray(3, jnp.int32), trainable,
                                  make_optimizer(config.optimizer).init(trainable),
                                  jax.random.key_data(jax.random.key(0))), {})
  checkpointer.wait()
  checkpointer.close()
  return config, run, vision, ptree.merge(frozen, trainable)


def test_a_run_is_rebuilt_from_its_workdir_alone(tmp_path):
  config, run, vision, params = _run(tmp_path)
  record = store.read_run_record(run)
  assert record["config"]["init"]["vision_checkpoint"] == vision  # Recorded as an absolute path.
  assert record["towers"]["vision"]["source"] == vision
  assert record["towers"]["lm"]["source"] == "initialised from seed 0"
  loaded_config, loaded = pretrained.load_trained(run)
  assert loaded_config == config.with_absolute_paths()
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_a_run_loads_straight_onto_its_shards_on_a_mesh(tmp_path):
  """load_trained(run, mesh): every leaf is laid out as training lays it out on that mesh (no leaf
  whole on one device unless its rule replicates it), with the same values."""
  config, run, _, params = _run(tmp_path)
  mesh = sharding.make_mesh(2, 2, 2)
  _, loaded = pretrained.load_trained(run, mesh)
  parts = pretrained.flamingo_parts(config, mesh)
  expected = ptree.merge(parts.frozen_shardings, parts.trainable_shardings)
  jax.tree.map(lambda x, s: assert_sharding(x, s), loaded, expected)
  embedding = loaded["lm"]["embed"]["embedding"]  # [vocab, embed]: split over tensor and fsdp.
  assert embedding.addressable_shards[0].data.shape == (embedding.shape[0] // 2,
                                                        embedding.shape[1] // 2)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def assert_sharding(x, expected):
  assert x.sharding.is_equivalent_to(expected, x.ndim), (x.sharding, expected)


def test_a_tower_changed_since_training_is_an_error(tmp_path):
  _, run, vision, _ = _run(tmp_path)
  recorded = store.read_run_record(run)["towers"]["vision"]["fingerprint"]
  config = Config.from_dict(flamingo.get_config("tiny"))
  store.save_params(vision, init_params(config.model, seed=2)["vision"])  # Retrained in place.
  with pytest.raises(ValueError, match=f"frozen vision tower of the run in {run} was {vision} "
                     f"\\(fingerprint {recorded}\\), but loading it now gives {vision} "
                     "\\(fingerprint [0-9a-f]{16}\\): the weights changed since training"):
    pretrained.load_trained(run)


def test_a_resumed_run_must_find_its_towers(tmp_path):
  config, run, _, params = _run(tmp_path)
  frozen, _ = ptree.split(params)
  pretrained.record_run(run, config, frozen)  # The same towers: fine.
  other = {**frozen, "lm": jax.tree.map(lambda x: x + 1, frozen["lm"])}
  with pytest.raises(ValueError, match="frozen lm tower"):
    pretrained.record_run(run, config, other)


def test_a_workdir_without_a_record_is_named(tmp_path):
  with pytest.raises(ValueError, match=f"{tmp_path} has no run.json: pass the workdir of a training"):
    pretrained.load_trained(str(tmp_path))


def test_fingerprints_are_equal_on_any_mesh_and_see_every_weight_change():
  config = Config.from_dict(flamingo.get_config("tiny"))
  vision = init_params(config.model)["vision"]
  on_one_device = ptree.fingerprint(vision)
  mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
  spread = jax.device_put(vision, jax.sharding.NamedSharding(mesh, jax.P()))
  spread["blocks"]["mlp"]["up"]["kernel"] = jax.device_put(  # [layers, embed, mlp] over 4 devices.
      vision["blocks"]["mlp"]["up"]["kernel"], jax.sharding.NamedSharding(mesh, jax.P(None, "fsdp")))
  assert ptree.fingerprint(spread) == on_one_device
  assert ptree.fingerprint(jax.device_get(vision)) == on_one_device  # numpy leaves too.
  nudged = jax.tree.map(lambda x: x * (1 + 1e-3), vision)  # What any training step does.
  assert ptree.fingerprint(nudged) != on_one_device
  retyped = jax.tree.map(lambda x: x.astype(jnp.bfloat16), vision)
  assert ptree.fingerprint(retyped) != on_one_device
