"""Small models and inputs the tests share: the `tiny` preset with overrides, random batches, and
initialised params / jitted forwards cached per config (each compiles once per test session)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import flamingo as flamingo_presets
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo, example_inputs


def tiny_config(**overrides) -> FlamingoConfig:
  """The `tiny` preset with flattened overrides, e.g. tiny_config(**{"xattn.every": 3})."""
  config = flamingo_presets.get_config("tiny").model
  config.update_from_flattened_dict(overrides)
  return FlamingoConfig.from_dict(config)


def make_batch(config: FlamingoConfig, batch=2, length=16, num_images=2, num_frames=1,
               image_positions=(3, 9), seed=0):
  """Random tokens with `<image>` at `image_positions`, random images, and phi."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.lm.vocab_size, (batch, length))
  tokens[:, list(image_positions)] = config.image_token_id
  tokens[:, -1] = config.eoc_token_id
  size = config.vision.image_size
  images = rng.integers(0, 256, (batch, num_images, num_frames, size, size, 3), dtype=np.uint8)
  tokens = jnp.asarray(tokens, jnp.int32)
  return tokens, jnp.asarray(images), masking.media_index(tokens, config.image_token_id)


@functools.lru_cache(maxsize=None)
def _init(config: FlamingoConfig, seed: int):
  init = jax.jit(lambda: nn.meta.unbox(
      Flamingo(config).init(jax.random.key(seed), *example_inputs(config))["params"]))
  return init()


def init_params(config: FlamingoConfig, seed=0):
  """Initialised (unboxed) params, compiled once per config and seed; a fresh copy each call."""
  return jax.tree.map(lambda a: a, _init(config, seed))


@functools.lru_cache(maxsize=None)
def apply_fn(config: FlamingoConfig):
  """jit(Flamingo(config).apply), compiled once per config and input shapes."""
  return jax.jit(Flamingo(config).apply)
