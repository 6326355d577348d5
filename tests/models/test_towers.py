"""The frozen towers on their own: ViT layouts and the text-only LLaMA LM."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.vision import VisionTransformer
from tests.builders import tiny_config


@pytest.mark.parametrize("layout, tokens", [
    ({}, 17),  # CLIP: 16 patches + class token.
    ({"vision.class_token": False, "vision.pre_norm": False, "vision.post_norm": True,
      "vision.activation": "gelu_tanh", "vision.patch_bias": True}, 16),  # SigLIP.
])
def test_vision_output_shape(layout, tokens):
  config = tiny_config(**layout)
  vit = VisionTransformer(config.vision, config.execution)
  images = jnp.zeros((2, 3, 4, 32, 32, 3), jnp.uint8)
  params = jax.jit(vit.init)(jax.random.key(0), images)
  out = jax.jit(vit.apply)(params, images)
  assert out.shape == (2, 3, 4, tokens, config.vision.width)
  assert ("class_token" in params["params"]) == (tokens == 17)


def test_vision_rejects_wrong_image_size():
  config = tiny_config()
  vit = VisionTransformer(config.vision, config.execution)
  with pytest.raises(ValueError, match="model.vision.image_size=32"):
    jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1, 1, 1, 48, 48, 3), jnp.uint8))


def test_vision_rejects_float_images():
  config = tiny_config()
  vit = VisionTransformer(config.vision, config.execution)
  with pytest.raises(ValueError, match="uint8"):
    jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1, 1, 1, 32, 32, 3), jnp.float32))


@pytest.mark.parametrize("tied", [False, True])
def test_text_lm_is_causal_and_ties_embeddings(tied):
  config = tiny_config(**{"lm.tie_embeddings": tied})  # tiny has GQA: 4 query, 2 kv heads.
  lm = DecoderLM(config.lm, config.execution)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 12)), jnp.int32)
  params = nn.meta.unbox(jax.jit(lm.init)(jax.random.key(0), tokens))
  apply = jax.jit(lm.apply)
  logits = apply(params, tokens)
  assert logits.shape == (2, 12, config.lm.vocab_size)
  changed = apply(params, tokens.at[:, 7].set((tokens[:, 7] + 1) % 512))
  np.testing.assert_array_equal(logits[:, :7], changed[:, :7])  # The past ignores the future.
  assert np.abs(np.asarray(logits[:, 7:] - changed[:, 7:])).max() > 0
  assert ("head" in params["params"]) != tied
  key_kernel = params["params"]["segment_0"]["block_0"]["attn"]["key"]["kernel"]
  assert key_kernel.shape == (config.lm.num_layers, config.lm.width, 2, config.lm.head_dim)
