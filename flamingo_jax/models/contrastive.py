"""CLIP-style contrastive towers: the paper's first stage pretrains the vision tower this way."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.layers import dense
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.vision import VisionTransformer


class ContrastiveTowers(nn.Module):
  """CLIP-style towers: the Flamingo vision tower (same parameter path `vision`, so its weights load
  as Flamingo's frozen tower) and a text tower of the LM's shape, each mean-pooled and projected to
  `embed_dim`, with a learned temperature."""

  config: FlamingoConfig
  embed_dim: int = 128

  @nn.compact
  def __call__(self, tokens: jax.Array, images: jax.Array, text_mask: jax.Array):
    """tokens [B, T], images [B, 1, F, H, W, 3] uint8, text_mask [B, T] -> (image [B, E], text
    [B, E]) unit vectors and the logit scale."""
    c = self.config
    features = VisionTransformer(c.vision, c.execution, name="vision")(images[:, :1])
    image = dense(self.embed_dim, ("embed", None), c.execution, name="image_proj")(
        features.mean(axis=(1, 2, 3)))
    hidden = DecoderLM(c.lm, c.execution, num_extra_tokens=c.num_extra_tokens, name="text")(
        tokens, return_hidden=True)
    weights = text_mask.astype(hidden.dtype)[..., None]
    pooled = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    text = dense(self.embed_dim, ("embed", None), c.execution, name="text_proj")(pooled)
    log_scale = self.param("log_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)  # noqa: E731
    return normalise(image.astype(jnp.float32)), normalise(text.astype(jnp.float32)), \
        jnp.exp(jnp.minimum(log_scale, np.log(100.0)))
