"""Frozen LLaMA-family decoder LM, optionally interleaved with gated cross-attention blocks.

Layer plan. The LM's layers are grouped into *units*: a unit is an optional gated block followed by
one or more LM blocks. Units of the same shape are stacked into a *segment* (one `nn.scan`, or an
unrolled loop). A text-only LM is one segment of L single-block units. With a gated block before layer
i whenever i % every == offset, the plan is: `offset` single-block units without a gated block, then the
full units of `every` blocks that start with a gated block, then one shorter unit for the remainder
(e.g. Flamingo-80B: 80 layers, every 7th -> 11 units of 7 and one of 3, 12 gated blocks).

Parameters: `segment_{k}/block_{j}` (LM block j of each unit) and `segment_{k}/xattn` (the gated block),
with a leading [units] axis when scanned. `params.py` converts between plans and between scanned and
unrolled layouts, so a text-only LM's weights load into any Flamingo placement.

New tokens. Ids >= V (`<image>`, `<EOC>`) use a separate small table `extra_embed` [E, D] and output
rows `extra_head` [D, E]; they are the only trainable LM parameters (as IDEFICS does).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.config import ExecutionConfig, LMConfig, XAttnConfig
from flamingo_jax.models.gated_xattn import GatedCrossAttentionDense
from flamingo_jax.models.layers import (Attention, DecodeSlots, Mlp, constrain, dense, repeat,
                                        rms_norm)


@dataclasses.dataclass(frozen=True)
class Segment:
  """`num_units` units, each an optional gated block then `blocks_per_unit` LM blocks."""

  num_units: int
  blocks_per_unit: int
  has_xattn: bool


def layer_plan(num_layers: int, xattn: XAttnConfig | None) -> tuple[Segment, ...]:
  """The segments of an LM of `num_layers` layers with gated blocks placed as `xattn` says."""
  if xattn is None:
    return (Segment(num_layers, 1, False),)
  plan = [Segment(xattn.offset, 1, False)] if xattn.offset else []
  full, rest = divmod(num_layers - xattn.offset, xattn.every)
  if full:
    plan.append(Segment(full, xattn.every, True))
  if rest:
    plan.append(Segment(1, rest, True))
  return tuple(plan)


class LMBlock(nn.Module):
  """x + attn(RMSNorm(x)) (causal, rotary, GQA), then x + SwiGLU(RMSNorm(x)). x: [B, T, D].

  With `decode` the attention reads and extends the key/value cache (`layers.Attention`)."""

  config: LMConfig
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode: DecodeSlots | None = None,
               segments: jax.Array | None = None) -> jax.Array:
    c, ex = self.config, self.execution
    h = rms_norm(ex, c.norm_eps, name="attn_norm")(x).astype(x.dtype)
    x = x + Attention(c.num_heads, c.num_kv_heads, c.head_dim, c.width, ex,
                      rope_theta=c.rope_theta, rope_scaling=c.rope_scaling,
                      name="attn")(h, h, positions=positions, is_causal=True, segments=segments,
                                   decode=decode)
    h = rms_norm(ex, c.norm_eps, name="mlp_norm")(x).astype(x.dtype)
    x = x + Mlp(c.mlp_dim, "silu", ex, gated=True, name="mlp")(h)
    return constrain(x, ("batch", "length", "act_embed"))


def output_kernels(lm_params, config: LMConfig) -> tuple[jax.Array, ...]:
  """The head `DecoderLM` applies to its final-normed states, from its parameters: the vocabulary's
  kernel [D, V], then the new tokens' [D, E] when it has new tokens (tied: the embeddings')."""
  if config.tie_embeddings:
    tables = [lm_params["embed"]["embedding"], lm_params.get("extra_embed", {}).get("embedding")]
    return tuple(t.T for t in tables if t is not None)
  kernels = [lm_params["head"]["kernel"], lm_params.get("extra_head", {}).get("kernel")]
  return tuple(k for k in kernels if k is not None)


class DecoderUnit(nn.Module):
  """Optional gated block, then `blocks_per_unit` LM blocks. Returns (y, None) for `repeat`."""

  config: LMConfig
  xattn: XAttnConfig | None
  blocks_per_unit: int
  execution: ExecutionConfig

  @nn.compact
  def __call__(self, y, positions, visual, phi, decode=None, segments=None
               ) -> tuple[jax.Array, None]:
    if self.xattn is not None:
      y = GatedCrossAttentionDense(self.xattn, self.execution, name="xattn")(y, visual, phi)
    for j in range(self.blocks_per_unit):
      y = LMBlock(self.config, self.execution, name=f"block_{j}")(y, positions, decode, segments)
    return y, None


class DecoderLM(nn.Module):
  """Tokens [B, T] -> logits [B, T, V + num_extra_tokens] (or hidden states [B, T, D]).

  Text-only with `xattn=None`; with `xattn` set, `visual` [B, N, R, D_v] and the media index `phi`
  [B, T] must be given (see `masking.py`). Decoding (`decoding.py`) passes `decode`, per-row
  `positions`, and a mutable `cache` collection: self-attention keys/values are cached per LM block,
  the gated blocks' visual keys/values once per request. Packed rows (several examples end to end)
  pass `segments` [B, T] (self-attention stays within a segment) and per-segment `positions`.
  """

  config: LMConfig
  execution: ExecutionConfig
  xattn: XAttnConfig | None = None
  num_extra_tokens: int = 0

  @nn.compact
  def __call__(self, tokens: jax.Array, visual: jax.Array | None = None,
               phi: jax.Array | None = None, positions: jax.Array | None = None,
               return_hidden: bool = False, decode: DecodeSlots | None = None,
               segments: jax.Array | None = None, logits_at: jax.Array | None = None) -> jax.Array:
    """`logits_at` [B] int: the logits of only that position of each row, [B, 1, V + E]."""
    c, ex = self.config, self.execution
    if (self.xattn is not None) != (visual is not None and phi is not None):
      raise ValueError("DecoderLM: pass `visual` and `phi` exactly when the LM has gated blocks.")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    dtype, param_dtype = jnp.dtype(ex.dtype), jnp.dtype(ex.param_dtype)
    embed = nn.Embed(c.vocab_size, c.width, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(0.02), ("vocab", "embed")), name="embed")
    is_new = tokens >= c.vocab_size
    y = embed(jnp.where(is_new, 0, tokens))
    if self.num_extra_tokens:
      extra_embed = nn.Embed(self.num_extra_tokens, c.width, dtype=dtype, param_dtype=param_dtype,
                             embedding_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(0.02), ("new_tokens", "embed")),
                             name="extra_embed")
      y = jnp.where(is_new[..., None], extra_embed(jnp.where(is_new, tokens - c.vocab_size, 0)), y)
    y = constrain(y, ("batch", "length", "act_embed"))

    for k, segment in enumerate(layer_plan(c.num_layers, self.xattn)):
      y = repeat(DecoderUnit, segment.num_units, y, positions, visual, phi, decode, segments,
                 execution=ex, name=f"segment_{k}", config=c,
                 blocks_per_unit=segment.blocks_per_unit,
                 xattn=self.xattn if segment.has_xattn else None)

    y = rms_norm(ex, c.norm_eps, name="final_norm")(y).astype(dtype)
    if return_hidden:  # [B, T, D] final-normed states (the contrastive text tower pools them).
      return y
    if logits_at is not None:
      y = jnp.take_along_axis(y, logits_at[:, None, None], axis=1)
    if c.tie_embeddings:
      logits = embed.attend(y)
    else:
      logits = dense(c.vocab_size, ("embed", "vocab"), ex, name="head")(y)
    if self.num_extra_tokens:
      if c.tie_embeddings:
        extra = extra_embed.attend(y)
      else:
        extra = dense(self.num_extra_tokens, ("embed", "new_tokens"), ex, name="extra_head")(y)
      logits = jnp.concatenate([logits, extra], axis=-1)
    return constrain(logits, ("batch", "length", "act_vocab"))
