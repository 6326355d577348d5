"""The masking rule, exercised through one gated block and through media_index itself."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models import masking
from flamingo_jax.models.gated_xattn import GatedCrossAttentionDense
from tests.builders import tiny_config

IMG = 7  # The image token id used in these hand-checked sequences.


def test_media_index_previous_rule():
  tokens = jnp.array([[1, 2, IMG, 3, 4, IMG, 5, IMG, 6]])
  np.testing.assert_array_equal(masking.media_index(tokens, IMG), [[0, 0, 1, 1, 1, 2, 2, 3, 3]])


def test_media_index_p_next_rule():
  tokens = jnp.array([[1, 2, IMG, 3, 4, IMG, 5, IMG, 6],
                      [1, 2, IMG, 3, 4, IMG, 5, IMG, 6],
                      [1, 2, 3, 4, 5, 6, 7 + 1, 9, 9]])
  phi = masking.media_index(tokens, IMG, attend_next=jnp.array([True, False, True]))
  np.testing.assert_array_equal(phi, [
      [1, 1, 1, 2, 2, 2, 3, 3, 3],  # Next image; the <image> token keeps its own; after the last: last.
      [0, 0, 1, 1, 1, 2, 2, 3, 3],  # Rows choose their rule independently.
      [0, 0, 0, 0, 0, 0, 0, 0, 0],  # No image at all: nothing to attend to under either rule.
  ])


def _block_and_inputs(seed=0):
  config = tiny_config(**{"xattn.gate_shape": "vector"})
  block = GatedCrossAttentionDense(config.xattn, config.execution)
  rng = np.random.default_rng(seed)
  tokens = jnp.array([[1, 2, 3, IMG, 4, 5, IMG, 6, 7, IMG, 8, 9]])
  phi = masking.media_index(tokens, IMG)
  y = jnp.asarray(rng.normal(size=(1, 12, config.lm.width)), jnp.float32)
  visual = jnp.asarray(rng.normal(size=(1, 3, 5, config.resampler.width)), jnp.float32)
  params = nn.meta.unbox(block.init(jax.random.key(0), y, visual, phi)["params"])
  params["attn_gate"] = jnp.full_like(params["attn_gate"], 0.7)  # Open the gates.
  params["ffw_gate"] = jnp.full_like(params["ffw_gate"], 0.7)
  return block, params, y, visual, phi


def _apply(block, params, y, visual, phi):
  out, state = block.apply({"params": params}, y, visual, phi, mutable=["intermediates"])
  return np.asarray(out), np.asarray(state["intermediates"]["xattn_output"][0])


@pytest.mark.parametrize("changed", [1, 2, 3])
def test_token_sees_only_image_phi(changed):
  block, params, y, visual, phi = _block_and_inputs()
  before, _ = _apply(block, params, y, visual, phi)
  noise = np.random.default_rng(1).normal(size=visual.shape[2:])  # Not constant: LN would remove it.
  visual2 = visual.at[:, changed - 1].add(noise)
  after, _ = _apply(block, params, y, visual2, phi)
  moved = np.abs(after - before).max(axis=-1)[0]
  sees = np.asarray(phi[0]) == changed
  assert (moved[sees] > 1e-4).all(), moved
  np.testing.assert_array_equal(moved[~sees], 0.0)


def test_tokens_before_first_image_get_exactly_zero_and_no_nan():
  block, params, y, visual, phi = _block_and_inputs()
  _, xattn = _apply(block, params, y, visual, phi)
  assert np.isfinite(xattn).all()
  np.testing.assert_array_equal(xattn[0, :3], 0.0)  # Positions 0-2 precede the first <image>.
  assert np.abs(xattn[0, 3:]).min(axis=-1).max() > 0

  def loss(p):
    return jnp.sum(block.apply({"params": p}, y, visual, phi) ** 2)
  grads = jax.grad(loss)(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_p_next_moves_tokens_to_the_next_image():
  block, params, y, visual, _ = _block_and_inputs()
  tokens = jnp.array([[1, 2, 3, IMG, 4, 5, IMG, 6, 7, IMG, 8, 9]])
  phi_next = masking.media_index(tokens, IMG, attend_next=True)
  before, _ = _apply(block, params, y, visual, phi_next)
  noise = np.random.default_rng(1).normal(size=visual.shape[2:])
  after, _ = _apply(block, params, y, visual.at[:, 1].add(noise), phi_next)
  moved = np.abs(after - before).max(axis=-1)[0] > 0
  # Under p_next, the tokens between images 1 and 2 (positions 4, 5) and <image> 2 itself see image 2.
  np.testing.assert_array_equal(np.nonzero(moved)[0], [4, 5, 6])


def test_fresh_block_is_identity(tiny):
  block = GatedCrossAttentionDense(tiny.xattn, tiny.execution)
  _, _, y, visual, phi = _block_and_inputs()
  params = nn.meta.unbox(block.init(jax.random.key(1), y, visual, phi)["params"])
  np.testing.assert_array_equal(block.apply({"params": params}, y, visual, phi), y)


def test_media_index_is_the_same_on_numpy():
  tokens = np.array([[1, IMG, 3, IMG, 5], [IMG, 2, 3, 4, IMG]])
  for attend_next in (False, np.array([True, False])):
    on_host = masking.media_index(tokens, IMG, attend_next)
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_array_equal(on_host, masking.media_index(jnp.asarray(tokens), IMG, attend_next))
