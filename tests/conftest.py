"""Test session set-up: 8 virtual CPU devices (for the mesh tests) and small shared builders."""

import functools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 virtual CPU devices for the mesh tests; LLVM optimisation off: compiles ~30% faster, and the
# tests' programs are tiny. Subprocesses started by tests inherit both.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import flamingo as flamingo_presets  # noqa: E402
from flamingo_jax import masking  # noqa: E402
from flamingo_jax.config import FlamingoConfig  # noqa: E402
from flamingo_jax.model import Flamingo, example_inputs  # noqa: E402


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


@pytest.fixture
def tiny():
  return tiny_config()
