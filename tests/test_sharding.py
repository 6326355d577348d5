"""The forward pass on an 8-device CPU mesh (data x fsdp x tensor = 2x2x2) matches one device."""

import jax
import numpy as np

from flamingo_jax import sharding
from flamingo_jax.models.flamingo import Flamingo, abstract_params
from tests.builders import apply_fn, init_params, make_batch, tiny_config


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
