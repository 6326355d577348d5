"""Frozen vision encoder: a ViT in the CLIP layout, or the SigLIP variant (see VisionConfig)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.config import ExecutionConfig, VisionConfig
from flamingo_jax.models.layers import (Attention, Mlp, constrain, dense, layer_norm, repeat)


class VisionBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x)). x: [M, S, D]."""

  config: VisionConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
    c, ex = self.config, self.execution
    h = layer_norm(ex, c.norm_eps, name="attn_norm")(x).astype(x.dtype)
    x = x + Attention(c.num_heads, c.num_heads, c.width // c.num_heads, c.width, ex,
                      use_bias=True, name="attn")(h, h)
    h = layer_norm(ex, c.norm_eps, name="mlp_norm")(x).astype(x.dtype)
    x = x + Mlp(c.mlp_dim, c.activation, ex, use_bias=True, name="mlp")(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class VisionTransformer(nn.Module):
  """uint8 images or frames [B, T_img, F, H, W, 3] -> patch features [B, T_img, F, S, D_vis].

  S = (H / patch)^2, plus one for the class token when the config has one (its feature is kept).
  """

  config: VisionConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c, ex = self.config, self.execution
    *lead, h, w, ch = images.shape
    if (h, w, ch) != (c.image_size, c.image_size, 3):
      raise ValueError(f"Images are {h}x{w}x{ch} but model.vision.image_size={c.image_size} (RGB); "
                       "resize the inputs or change the config.")
    if images.dtype != jnp.uint8:
      raise ValueError(f"Images must be uint8 pixels in [0, 255], got {images.dtype}; the tower "
                       "normalises them with model.vision.pixel_mean / pixel_std.")
    mean, std = jnp.asarray(c.pixel_mean), jnp.asarray(c.pixel_std)
    images = (images.astype(jnp.float32) / 255.0 - mean) / std
    p, g = c.patch_size, c.image_size // c.patch_size
    x = images.reshape(-1, g, p, g, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(-1, g * g, p * p * ch)
    x = dense(c.width, ("patch", "embed"), ex, use_bias=c.patch_bias, name="patch_embed")(
        x.astype(jnp.dtype(ex.dtype)))
    if c.class_token:
      cls = self.param("class_token", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed",)), (c.width,), jnp.dtype(ex.param_dtype))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.width)), x], 1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("patches", "embed")), (x.shape[1], c.width),
                     jnp.dtype(ex.param_dtype))
    x = x + pos.astype(x.dtype)
    if c.pre_norm:
      x = layer_norm(ex, c.norm_eps, name="pre_norm")(x).astype(x.dtype)
    x = constrain(x, ("batch", "length", "act_embed"))
    x = repeat(VisionBlock, c.num_layers, x, execution=ex, name="blocks", config=c)
    if c.post_norm:
      x = layer_norm(ex, c.norm_eps, name="post_norm")(x).astype(x.dtype)
    return x.reshape(*lead, x.shape[1], c.width)
