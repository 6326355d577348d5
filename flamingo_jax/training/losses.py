"""Training losses."""

from __future__ import annotations

import functools
from typing import Sequence

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


def fused_token_losses(hidden: jax.Array, kernels: Sequence[jax.Array], labels: jax.Array,
                       chunk: int, z_loss: float = 0.0) -> jax.Array:
  """`token_losses` of the logits hidden [B, T, D] @ [kernel_0 | kernel_1 | ...] (each [D, V_i], in
  hidden's dtype) against labels [B, T] -> [B, T] float32, without ever holding the [B, T, sum V_i]
  logits: `chunk` positions of every row at a time, in a scan. The gradient with respect to the
  hidden states is computed in the same pass (per token, before the incoming cotangent scales it),
  so the backward pass does not rebuild the logits; a kernel that is differentiated (a trained head)
  gets its gradient from logits rebuilt chunk by chunk in the backward pass."""
  return _fused(chunk, z_loss, hidden, tuple(kernels), labels)


def _chunked(x: jax.Array, chunk: int) -> jax.Array:
  """[B, T, ...] -> [ceil(T / chunk), B, chunk, ...], zero-padded at the end of T."""
  b, t = x.shape[:2]
  n = -(-t // chunk)
  x = jnp.pad(x, [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _unchunked(x: jax.Array, t: int) -> jax.Array:
  """[n, B, chunk, ...] -> [B, t, ...] (the inverse of `_chunked`)."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def _chunk_logits(h: jax.Array, kernels: tuple[jax.Array, ...]) -> list[jax.Array]:
  """h [B, c, D] -> float32 logits [B, c, V_i] per kernel (matmul in h's dtype, as `layers.Dense`)."""
  return [jnp.einsum("bcd,dv->bcv", h, k.astype(h.dtype)).astype(jnp.float32) for k in kernels]


def _chunk_losses(h, labels, kernels, z_loss):
  """One chunk: (losses [B, c], lse [B, c], d loss / d logits per kernel [B, c, V_i]), each kernel's
  logits kept apart (no [B, c, sum V_i] copy)."""
  logits = _chunk_logits(h, kernels)
  top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [x.max(axis=-1) for x in logits]))
  lse = top + jnp.log(sum(jnp.exp(x - top[..., None]).sum(axis=-1) for x in logits))
  starts = _starts(kernels)
  label_logits = sum(_label_part(x, labels - start)[0] for x, start in zip(logits, starts))
  scale = (1 + 2 * z_loss * lse)[..., None]
  dlogits = [jnp.exp(x - lse[..., None]) * scale - _label_part(x, labels - start)[1]
             for x, start in zip(logits, starts)]
  return lse - label_logits + z_loss * jnp.square(lse), lse, dlogits


def _starts(kernels) -> list[int]:
  """Where each kernel's columns start in the joined vocabulary."""
  starts, total = [], 0
  for k in kernels:
    starts.append(total)
    total += k.shape[-1]
  return starts


def _label_part(logits, local_labels):
  """(the label's logit where the label falls in this part, else 0 [B, c]; its one-hot [B, c, V_i],
  all zeros outside the part)."""
  inside = (local_labels >= 0) & (local_labels < logits.shape[-1])
  index = jnp.clip(local_labels, 0, logits.shape[-1] - 1)
  value = jnp.where(inside, jnp.take_along_axis(logits, index[..., None], axis=-1)[..., 0], 0.0)
  return value, jax.nn.one_hot(jnp.where(inside, local_labels, -1), logits.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(chunk, z_loss, hidden, kernels, labels):
  def body(_, xs):
    return None, _chunk_losses(*xs, kernels, z_loss)[0]
  t = hidden.shape[1]
  return _unchunked(jax.lax.scan(body, None, (_chunked(hidden, chunk), _chunked(labels, chunk)))[1], t)


def _fused_fwd(chunk, z_loss, hidden, kernels, labels):
  h, ks, y = hidden.value, tuple(k.value for k in kernels), labels.value

  def body(_, xs):
    hc, yc = xs
    losses, lse, dlogits = _chunk_losses(hc, yc, ks, z_loss)
    dh = sum(jnp.einsum("bcv,dv->bcd", part, k.astype(jnp.float32))
             for part, k in zip(dlogits, ks)) if hidden.perturbed else None
    return None, (losses, lse, dh)
  t = h.shape[1]
  losses, lse, dh = jax.lax.scan(body, None, (_chunked(h, chunk), _chunked(y, chunk)))[1]
  dh = None if dh is None else _unchunked(dh, t)
  return _unchunked(losses, t), (h, ks, y, _unchunked(lse, t), dh, [k.perturbed for k in kernels])


def _fused_bwd(chunk, z_loss, residuals, g):
  h, ks, y, lse, dh, trained = residuals
  d_hidden = None if dh is None else (g[..., None] * dh).astype(h.dtype)
  d_kernels = tuple(_kernel_grad(h, ks, i, y, lse, g, chunk, z_loss) if trained[i] else None
                    for i in range(len(ks)))
  return d_hidden, d_kernels, None


def _kernel_grad(h, kernels, i, labels, lse, g, chunk, z_loss):
  """d loss / d kernels[i] [D, V_i]: its logits rebuilt chunk by chunk, normalised by the stored
  log-sum-exp."""
  start = _starts(kernels)[i]

  def body(acc, xs):
    hc, yc, lc, gc = xs
    logits = _chunk_logits(hc, (kernels[i],))[0]
    probs = jnp.exp(logits - lc[..., None]) * (1 + 2 * z_loss * lc)[..., None]
    dlogits = (probs - _label_part(logits, yc - start)[1]) * gc[..., None]
    return acc + jnp.einsum("bcd,bcv->dv", hc.astype(jnp.float32), dlogits), None
  xs = tuple(_chunked(x, chunk) for x in (h, labels, lse, g))
  zeros = jnp.zeros(kernels[i].shape, jnp.float32)
  return jax.lax.scan(body, zeros, xs)[0].astype(kernels[i].dtype)


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)
