"""Perceiver Resampler shapes for images and video, and time-embedding interpolation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.resampler import PerceiverResampler, time_embeddings
from tests.builders import tiny_config


def _features(config, frames, batch=2, media=3, tokens=5, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(batch, media, frames, tokens, config.vision.width)), jnp.float32)


@pytest.fixture(scope="module")
def resampler_and_params():
  config = tiny_config()
  resampler = PerceiverResampler(config.resampler, config.execution)
  params = nn.meta.unbox(jax.jit(resampler.init)(jax.random.key(0), _features(config, 8)))
  return config, resampler, params


@pytest.mark.parametrize("frames", [1, 8, 30])
def test_output_shape(resampler_and_params, frames):
  config, resampler, params = resampler_and_params
  out = jax.jit(resampler.apply)(params, _features(config, frames))
  assert out.shape == (2, 3, config.resampler.num_latents, config.resampler.width)
  assert np.isfinite(np.asarray(out)).all()


def test_thirty_frames_need_no_new_parameters(resampler_and_params):
  config, resampler, params = resampler_and_params
  table = params["params"]["time_embed"]
  assert table.shape == (8, config.resampler.width)
  # Interpolation keeps the end points and is linear in between.
  interpolated = time_embeddings(table, 30)
  np.testing.assert_allclose(interpolated[0], table[0])
  np.testing.assert_allclose(interpolated[-1], table[-1], atol=1e-6)
  where = 13 * 7 / 29  # Frame 13 of 30 sits between time embeddings 3 and 4.
  np.testing.assert_allclose(interpolated[13], table[3] + (where - 3) * (table[4] - table[3]),
                             atol=1e-6)


def test_frames_are_distinguished_by_time_embeddings(resampler_and_params):
  """Permuting the frames changes the output: the resampler knows frame order."""
  config, resampler, params = resampler_and_params
  feats = _features(config, 8)
  out = jax.jit(resampler.apply)(params, feats)
  swapped = jax.jit(resampler.apply)(params, feats[:, :, ::-1])
  assert np.abs(np.asarray(out - swapped)).max() > 1e-4


def test_too_many_frames_without_interpolation_is_an_error():
  config = tiny_config(**{"resampler.interpolate_time_embeddings": False})
  resampler = PerceiverResampler(config.resampler, config.execution)
  with pytest.raises(ValueError, match="model.resampler.interpolate_time_embeddings"):
    jax.eval_shape(resampler.init, jax.random.key(0), _features(config, 30))
