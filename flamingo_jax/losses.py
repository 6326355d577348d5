"""Training losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of logits [B, T, V] against labels [B, T] over positions where mask [B, T]
  is set (log-softmax in float32); 0 when the mask is empty."""
  logits = logits.astype(jnp.float32)
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  losses = jax.nn.logsumexp(logits, axis=-1) - label_logits
  mask = mask.astype(jnp.float32)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
