"""The forward pass on an 8-device CPU mesh (data x fsdp x tensor = 2x2x2) matches one device; the
frozen-tower policies (`mesh.frozen`) lay out only the frozen tree and leave the step's maths alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax import sharding
from flamingo_jax.models.flamingo import Flamingo, abstract_params
from flamingo_jax.training.setup import build_setup, jit_train_step
from flamingo_jax.training.step import TrainState
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.pretrained import ModelParts
from tests.builders import apply_fn, init_params, make_batch, tiny_config
from tests.configs import train_small

POLICIES = ("fsdp", "tensor", "replicated")


def test_sharded_forward_matches_single_device():
  assert jax.device_count() == 8, "tests/conftest.py should force 8 host devices"
  config = tiny_config(**{"lm.num_kv_heads": 2})
  batch = make_batch(config, batch=4)
  params = init_params(config)
  expected = apply_fn(config)({"params": params}, *batch)

  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  param_shardings = sharding.shardings(abstract_params(config), mesh)
  sharded = jax.device_put(params, param_shardings)
  # The layout is real: e.g. the LM head is split over fsdp (embed) and tensor (vocab).
  head = sharded["lm"]["head"]["kernel"]
  assert head.sharding.spec == jax.P("fsdp", "tensor")
  assert head.addressable_shards[0].data.shape == (config.lm.width // 2, config.lm.vocab_size // 2)

  batch_sharding = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
  with sharding.active(mesh):
    forward = jax.jit(Flamingo(config).apply, in_shardings=(
        {"params": param_shardings}, batch_sharding, batch_sharding, batch_sharding))
    logits = forward({"params": sharded}, *batch)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=2e-5, rtol=0)


def test_make_mesh_fills_one_axis_and_rejects_bad_shapes():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  try:
    sharding.make_mesh(data=3, fsdp=2, tensor=2)
  except ValueError as e:
    assert "needs 12 devices" in str(e)
  else:
    raise AssertionError("an impossible mesh was accepted")


def _setup(policy):
  """A 4-device mesh (data 1, fsdp 2, tensor 2) laying out the frozen towers by `policy`."""
  config = train_small.config("one", **{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2,
                                        "mesh.frozen": policy, "optimizer.warmup_steps": 0})
  return config, build_setup(config, devices=jax.devices()[:4])


def _specs(shardings):
  """Each leaf's PartitionSpec without trailing Nones (P(None, None) == P())."""
  def trim(s):
    spec = tuple(s.spec)
    while spec and spec[-1] is None:
      spec = spec[:-1]
    return jax.P(*spec)
  return jax.tree.map(trim, shardings)


def test_frozen_policy_lays_out_the_frozen_towers_only():
  setups = {policy: _setup(policy)[1] for policy in POLICIES}
  frozen = {p: _specs(s.parts.frozen_shardings) for p, s in setups.items()}
  expected = {  # (LM MLP up [layers, D, F], vision patch embedding [patch, D], LM head [D, V])
      "fsdp": (jax.P(None, "fsdp", "tensor"), jax.P(None, "fsdp"), jax.P("fsdp", "tensor")),
      "tensor": (jax.P(None, None, "tensor"), jax.P(), jax.P(None, "tensor")),
      "replicated": (jax.P(), jax.P(), jax.P()),
  }
  for policy, (mlp, patch, head) in expected.items():
    lm, vision = frozen[policy]["lm"], frozen[policy]["vision"]
    assert lm["segment_0"]["block_0"]["mlp"]["up"]["kernel"] == mlp
    assert vision["patch_embed"]["kernel"] == patch
    assert lm["head"]["kernel"] == head
    abstract = setups[policy].abstract_frozen  # What loading, the step and the fit report use.
    assert _specs(jax.tree.map(lambda x: x.sharding, abstract)) == frozen[policy]
  assert frozen["fsdp"] == _specs(sharding.shardings(setups["fsdp"].parts.boxed[0],
                                                     setups["fsdp"].mesh))  # Today's layout.
  assert not any("fsdp" in str(s) for s in jax.tree.leaves(frozen["tensor"]))
  assert all(s == jax.P() for s in jax.tree.leaves(frozen["replicated"]))
  state = [_specs(s.state_shardings) for s in setups.values()]  # Trainable tree and optimiser.
  assert state[0] == state[1] == state[2]
  ffw_up = state[0].trainable["lm"]["segment_0"]["xattn"]["ffw"]["up"]["kernel"]
  assert ffw_up == jax.P(None, "fsdp", "tensor")  # The trainable tree keeps fsdp under every policy.


def test_frozen_policy_leaves_the_training_step_unchanged():
  results = {}
  for policy in POLICIES:
    config, setup = _setup(policy)
    params = jax.device_get(init_params(config.model))  # On the host: the step donates the state.
    frozen, trainable = ptree.split(params, setup.parts.trainable_if)
    latents = trainable["resampler"]["latents"]
    frozen = jax.device_put(frozen, setup.parts.frozen_shardings)
    xattn = trainable["lm"]["segment_0"]["xattn"]
    xattn["attn_gate"], xattn["ffw_gate"] = xattn["attn_gate"] + 0.5, xattn["ffw_gate"] + 0.5  # Open.
    with sharding.active(setup.mesh):
      state = jax.device_put(TrainState(
          jnp.zeros((), jnp.int32), trainable, setup.optimizer.init(trainable),
          jax.random.key_data(jax.random.key(1))), setup.state_shardings)
      tokens, images, phi = make_batch(config.model, batch=8, length=16)
      batch = jax.device_put({"tokens": tokens, "images": images, "phi": phi,
                              "labels": jnp.roll(tokens, -1, axis=1),
                              "loss_mask": jnp.ones(tokens.shape, jnp.float32)},
                             setup.batch_sharding)
      state, metrics = jit_train_step(config, setup, {"interleaved": 1.0})(
          state, frozen, {"interleaved": batch})
    results[policy] = jax.device_get((metrics["loss"], state.trainable))
  loss, trainable = results["fsdp"]
  assert np.abs(trainable["resampler"]["latents"] - latents).max() > 1e-4  # The step did train.
  for policy in POLICIES[1:]:
    np.testing.assert_allclose(results[policy][0], loss, atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0),
                 results[policy][1], trainable)


def test_unknown_frozen_policy_names_the_config_field():
  config = tiny_config()
  with pytest.raises(ValueError, match="mesh.frozen='zero3'"):
    ModelParts(Flamingo(config), (), lambda path: True, sharding.make_mesh(), "zero3")
