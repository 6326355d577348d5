"""GATED XATTN-DENSE: the trainable block inserted before LM layers.

y = y + tanh(a_attn) * xattn(q=LN(y), kv=LN(visual))   (only tokens with an image get a non-zero xattn)
y = y + tanh(a_ffw)  * ffw(LN(y))
The gates a_* start at 0, so a freshly initialised block is the identity.
When decoding (the `cache` collection is mutable), the keys/values of the visual tokens are projected
at the prefill into the `context_cache` collection and reused by every later step
(`layers.Attention`, `cache_context`).

IDEFICS variant (XAttnConfig fields): RMSNorm instead of LN on the text side (`norm`), no norm on
the visual keys/values (`visual_norm`), a SwiGLU FFW of the LM's MLP width (`ffw_gated`, `ffw_dim`),
RMSNorm on the per-head queries and keys (`qk_norm`) and other alpha initialisers (`alpha_init`).
`XAttnConfig.gate="none"` (the paper's ablation) adds both outputs ungated and has no a_*
parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.config import ExecutionConfig, XAttnConfig
from flamingo_jax.models import masking
from flamingo_jax.models.layers import Attention, Mlp, layer_norm, rms_norm


def _alpha_init(config: XAttnConfig) -> nn.initializers.Initializer:
  if config.alpha_init == "normal":
    return nn.initializers.normal(config.alpha_init_std)
  return nn.initializers.ones_init() if config.alpha_init == "ones" else nn.initializers.zeros_init()


class GatedCrossAttentionDense(nn.Module):
  config: XAttnConfig
  execution: ExecutionConfig

  def _gated(self, name: str, x: jax.Array) -> jax.Array:
    """x [B, T, D] scaled by its tanh gate, or unchanged when `config.gate == "none"`."""
    return x if self.config.gate == "none" else self._gate(name, x.shape[-1]) * x

  def _gate(self, name: str, width: int) -> jax.Array:
    shape, axes = ((), ()) if self.config.gate_shape == "scalar" else ((width,), ("norm",))
    alpha = self.param(name, nn.with_logical_partitioning(_alpha_init(self.config), axes), shape,
                       jnp.dtype(self.execution.param_dtype))
    return jnp.tanh(alpha.astype(jnp.float32))

  @nn.compact
  def __call__(self, y: jax.Array, visual: jax.Array, phi: jax.Array) -> jax.Array:
    """y [B, T, D] text states, visual [B, N, R, D_v] visual tokens, phi [B, T] media index."""
    c, ex = self.config, self.execution
    b, n, r, dv = visual.shape
    d = y.shape[-1]
    kv = visual.reshape(b, n * r, dv)
    if c.visual_norm:
      kv = layer_norm(ex, name="visual_norm")(kv)
    kv = kv.astype(y.dtype)
    text_norm = lambda name: (layer_norm if c.norm == "layer" else rms_norm)(
        ex, c.norm_eps, name=name)
    q = text_norm("attn_norm")(y).astype(y.dtype)
    mask = masking.cross_attention_mask(phi, n, r, c.media_attention == "all_previous")
    attn = Attention(c.num_heads, c.num_heads, c.head_dim, d, ex, qk_norm=c.qk_norm,
                     qk_norm_eps=c.norm_eps, name="attn")(
                         q, kv, mask=mask, cache_context=self.is_mutable_collection("cache"))
    attn = attn * masking.has_image(phi, n)[..., None].astype(attn.dtype)
    self.sow("intermediates", "xattn_output", attn)
    y = y + self._gated("attn_gate", attn).astype(y.dtype)
    h = text_norm("ffw_norm")(y).astype(y.dtype)
    ffw = Mlp(c.ffw_dim or c.ffw_mult * d, c.ffw_activation, ex, gated=c.ffw_gated,
              name="ffw")(h)
    return y + self._gated("ffw_gate", ffw).astype(y.dtype)
