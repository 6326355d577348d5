"""The fused (chunked) cross-entropy against the whole-logits one: values and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.training.losses import fused_token_losses, token_losses

B, T, D, V, E = 2, 7, 16, 50, 2


def _inputs():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  vocab = jnp.asarray(rng.normal(size=(D, V)) * 0.3, jnp.float32)
  new = jnp.asarray(rng.normal(size=(D, E)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, V + E, (B, T))).at[0, :2].set(jnp.array([V, V + 1]))
  weights = jnp.asarray(rng.random((B, T)), jnp.float32)  # The incoming cotangent per token.
  return hidden, vocab, new, labels, weights


@pytest.mark.parametrize("z_loss", [0.0, 0.01])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_fused_losses_and_gradients_equal_the_whole_logits(chunk, z_loss):
  hidden, vocab, new, labels, weights = _inputs()

  def whole(h, k, e):
    return jnp.sum(weights * token_losses(jnp.concatenate([h @ k, h @ e], -1), labels, z_loss))

  def fused(h, k, e):
    return jnp.sum(weights * fused_token_losses(h, (k, e), labels, chunk, z_loss))

  np.testing.assert_allclose(fused_token_losses(hidden, (vocab, new), labels, chunk, z_loss),
                             token_losses(jnp.concatenate([hidden @ vocab, hidden @ new], -1),
                                          labels, z_loss), rtol=1e-6)
  for wrt in [(0,), (0, 2), (0, 1, 2), (2,)]:  # Frozen head, trained new rows, all trained, ...
    expected = jax.grad(whole, wrt)(hidden, vocab, new)
    got = jax.jit(jax.grad(fused, wrt))(hidden, vocab, new)
    for e, g in zip(expected, got):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
