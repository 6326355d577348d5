"""Training losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, labels: jax.Array, z_loss: float = 0.0) -> jax.Array:
  """Per-token cross-entropy (+ z_loss * logsumexp^2) in float32: [B, T, V], [B, T] -> [B, T]."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return lse - label_logits + z_loss * jnp.square(lse)


def next_token_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of logits [B, T, V] against labels [B, T] over positions where mask [B, T]
  is set; 0 when the mask is empty."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(token_losses(logits, labels) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
