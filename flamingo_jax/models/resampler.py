"""Perceiver Resampler: frame features [B, T_img, F, S, D_vis] -> R visual tokens [B, T_img, R, D].

`MlpProjection` is the paper's ablation in its place (`ResamplerConfig.kind="mlp"`): no latents and
no attention. It keeps one visual token per patch and frame (R = F * S) rather than pooling: the
ablation then removes only the Resampler's learned compression, and the gated blocks still see every
patch (pooling to one token per image would also remove the spatial detail, confounding the two).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.config import ExecutionConfig, ResamplerConfig
from flamingo_jax.config.model import check_frames
from flamingo_jax.models.layers import (Attention, Mlp, constrain, dense, layer_norm, repeat)


def time_embeddings(table: jax.Array, num_frames: int) -> jax.Array:
  """table [N_t, D] -> [F, D]: the first F rows, or rows linearly interpolated when F > N_t."""
  n = table.shape[0]
  if num_frames <= n:
    return table[:num_frames]
  where = jnp.linspace(0.0, n - 1.0, num_frames)
  lo = jnp.floor(where).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = (where - lo)[:, None].astype(table.dtype)
  return table[lo] * (1 - frac) + table[hi] * frac


class ResamplerBlock(nn.Module):
  """latents + attn(q=LN(latents), kv=concat(LN(media), LN(latents))), then + ffw(LN(latents)).

  latents: [M, R, D], media: [M, F*S, D] with M = B * T_img.
  """

  config: ResamplerConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, latents: jax.Array, media: jax.Array) -> tuple[jax.Array, None]:
    c, ex = self.config, self.execution
    q = layer_norm(ex, name="latents_norm")(latents).astype(latents.dtype)
    kv = jnp.concatenate([layer_norm(ex, name="media_norm")(media).astype(q.dtype), q], axis=1)
    latents = latents + Attention(c.num_heads, c.num_heads, c.head_dim, c.width, ex,
                                  qk_norm=c.qk_norm, qk_norm_type="layer", name="attn")(q, kv)
    h = layer_norm(ex, name="ffw_norm")(latents).astype(latents.dtype)
    latents = latents + Mlp(c.ffw_mult * c.width, c.ffw_activation, ex, name="ffw")(h)
    return constrain(latents, ("batch", "length", "act_embed")), None


def _media_tokens(config: ResamplerConfig, ex: ExecutionConfig, module: nn.Module,
                  features: jax.Array) -> jax.Array:
  """features [B, T_img, F, S, D_vis] -> media tokens [B * T_img, F * S, D]: projected to the latent
  width when D_vis differs, plus the learned time embedding of each frame (none with
  `config.time_embeddings` off). Called inside `module`'s compact `__call__`, so `input_proj` and
  `time_embed` are its parameters."""
  b, n, f, s, _ = features.shape
  check_frames(config, f)
  x = features.astype(jnp.dtype(ex.dtype))
  if x.shape[-1] != config.width:
    x = dense(config.width, ("vision_embed", "embed"), ex, name="input_proj")(x)
  if config.time_embeddings:
    table = module.param("time_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("frames", "embed")),
                         (config.num_time_embeddings, config.width), jnp.dtype(ex.param_dtype))
    x = x + time_embeddings(table, f).astype(x.dtype)[:, None, :]
  return constrain(x.reshape(b * n, f * s, config.width), ("batch", "length", "act_embed"))


class PerceiverResampler(nn.Module):
  config: ResamplerConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    """features [B, T_img, F, S, D_vis] -> visual tokens [B, T_img, R, D]."""
    c, ex = self.config, self.execution
    b, n = features.shape[:2]
    media = _media_tokens(c, ex, self, features)
    latents = self.param("latents", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("latents", "embed")), (c.num_latents, c.width),
                         jnp.dtype(ex.param_dtype))
    x = jnp.broadcast_to(latents.astype(media.dtype), (b * n, c.num_latents, c.width))
    x = repeat(ResamplerBlock, c.num_layers, x, media, execution=ex, name="blocks", config=c)
    x = layer_norm(ex, name="final_norm")(x).astype(x.dtype)
    return x.reshape(b, n, c.num_latents, c.width)


class MlpProjection(nn.Module):
  """The Resampler ablation: x = proj(features) + time embedding, x + FFW(LN(x)), LN; no latents.

  features [B, T_img, F, S, D_vis] -> visual tokens [B, T_img, F * S, D]: one per patch and frame.
  """

  config: ResamplerConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    c, ex = self.config, self.execution
    b, n = features.shape[:2]
    x = _media_tokens(c, ex, self, features)
    h = layer_norm(ex, name="ffw_norm")(x).astype(x.dtype)
    x = x + Mlp(c.ffw_mult * c.width, c.ffw_activation, ex, name="ffw")(h)
    x = layer_norm(ex, name="final_norm")(x).astype(x.dtype)
    return x.reshape(b, n, x.shape[1], c.width)
