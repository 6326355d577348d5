"""Analytic matmul inventory of a Flamingo step: which matmuls run, at which shapes, how often.

Each `MatMul` is one batched product [batch, m, k] x [k, n] of the forward pass, with the number of
backward products a training step needs for it (gradients of the trainable tree only):
  * frozen vision tower: forward only (no gradient reaches it);
  * frozen LM layers (from the first gated block on), frozen LM head: forward + input gradient;
  * trainable parts (resampler, gated blocks, new-token rows): forward + input + weight gradients,
    except where the input is frozen (the resampler's view of the vision features: no input gradient);
  * attention score / value products: one backward product per operand that needs a gradient.
A step's model FLOPs are sum(2 * batch * m * k * n * (1 + backward)). The benchmark times the same
shapes in isolation to get this machine's matmul throughput for exactly this mix.
"""

from __future__ import annotations

import dataclasses

from flamingo_jax.config import FlamingoConfig


@dataclasses.dataclass(frozen=True)
class MatMul:
  name: str
  batch: int
  m: int
  k: int
  n: int
  backward: int  # Backward products needed in a training step: 0, 1 (input or weight) or 2.

  @property
  def flops(self) -> int:
    return 2 * self.batch * self.m * self.k * self.n


def _attention(name, batch, heads, q_len, kv_len, head_dim, backward):
  return [MatMul(f"{name}.scores", batch * heads, q_len, head_dim, kv_len, backward),
          MatMul(f"{name}.values", batch * heads, q_len, kv_len, head_dim, backward)]


def inventory(config: FlamingoConfig, batch: int, seq_len: int, num_images: int,
              num_frames: int = 1) -> list[MatMul]:
  """The matmuls of one forward pass on [batch, seq_len] tokens and [batch, num_images, num_frames]
  images, each tagged with the backward products a training step adds."""
  v, r, lm, x = config.vision, config.resampler, config.lm, config.xattn
  out: list[MatMul] = []

  # Vision tower (frozen): M frames of S tokens.
  frames = batch * num_images * num_frames
  patches = (v.image_size // v.patch_size) ** 2
  s = patches + int(v.class_token)
  out.append(MatMul("vision.patch_embed", 1, frames * patches, v.patch_size ** 2 * 3, v.width, 0))
  for i in range(v.num_layers):
    t = frames * s
    out += [MatMul(f"vision.{i}.qkv", 1, t, v.width, 3 * v.width, 0),
            MatMul(f"vision.{i}.out", 1, t, v.width, v.width, 0),
            MatMul(f"vision.{i}.mlp_up", 1, t, v.width, v.mlp_dim, 0),
            MatMul(f"vision.{i}.mlp_down", 1, t, v.mlp_dim, v.width, 0)]
    out += _attention(f"vision.{i}.attn", frames, v.num_heads, s, s, v.width // v.num_heads, 0)

  # Perceiver Resampler (trainable): media items of F*S tokens, R latents.
  media = batch * num_images
  media_tokens = num_frames * s
  inner = r.num_heads * r.head_dim
  if v.width != r.width:
    out.append(MatMul("resampler.input_proj", 1, media * media_tokens, v.width, r.width, 1))
  if r.kind == "mlp":  # MlpProjection: one residual FFW over every patch token, no latents.
    out += [MatMul("resampler.ffw_up", 1, media * media_tokens, r.width, r.ffw_mult * r.width, 2),
            MatMul("resampler.ffw_down", 1, media * media_tokens, r.ffw_mult * r.width, r.width, 2)]
  tokens_per_image = media_tokens if r.kind == "mlp" else r.num_latents
  for i in range(r.num_layers if r.kind == "perceiver" else 0):
    latents = media * r.num_latents
    out += [MatMul(f"resampler.{i}.q", 1, latents, r.width, inner, 2),
            MatMul(f"resampler.{i}.kv_media", 1, media * media_tokens, r.width, 2 * inner, 1),
            MatMul(f"resampler.{i}.kv_latents", 1, latents, r.width, 2 * inner, 2),
            MatMul(f"resampler.{i}.out", 1, latents, inner, r.width, 2),
            MatMul(f"resampler.{i}.ffw_up", 1, latents, r.width, r.ffw_mult * r.width, 2),
            MatMul(f"resampler.{i}.ffw_down", 1, latents, r.ffw_mult * r.width, r.width, 2)]
    # Scores: the query needs a gradient, the keys too (latent rows); values likewise.
    out += _attention(f"resampler.{i}.attn", media, r.num_heads, r.num_latents,
                      media_tokens + r.num_latents, r.head_dim, 2)

  # LM with gated blocks. Layers before the first gated block need no backward at all.
  tokens = batch * seq_len
  xinner = x.num_heads * x.head_dim
  visual = batch * num_images * tokens_per_image
  for i in range(lm.num_layers):
    if i % x.every == x.offset:
      out += [MatMul(f"xattn.{i}.q", 1, tokens, lm.width, xinner, 2),
              MatMul(f"xattn.{i}.kv", 1, visual, r.width, 2 * xinner, 2),
              MatMul(f"xattn.{i}.out", 1, tokens, xinner, lm.width, 2),
              MatMul(f"xattn.{i}.ffw_up", 1, tokens, lm.width, x.ffw_mult * lm.width, 2),
              MatMul(f"xattn.{i}.ffw_down", 1, tokens, x.ffw_mult * lm.width, lm.width, 2)]
      out += _attention(f"xattn.{i}.attn", batch, x.num_heads, seq_len,
                        num_images * tokens_per_image, x.head_dim, 2)
    grad = 1 if i >= x.offset else 0  # Frozen weights: the input gradient only.
    hd = lm.head_dim
    out += [MatMul(f"lm.{i}.q", 1, tokens, lm.width, lm.num_heads * hd, grad),
            MatMul(f"lm.{i}.kv", 1, tokens, lm.width, 2 * lm.num_kv_heads * hd, grad),
            MatMul(f"lm.{i}.out", 1, tokens, lm.num_heads * hd, lm.width, grad),
            MatMul(f"lm.{i}.mlp_gate_up", 1, tokens, lm.width, 2 * lm.mlp_dim, grad),
            MatMul(f"lm.{i}.mlp_down", 1, tokens, lm.mlp_dim, lm.width, grad)]
    out += _attention(f"lm.{i}.attn", batch, lm.num_heads, seq_len, seq_len, hd, 2 * grad)
  out.append(MatMul("lm.head", 1, tokens, lm.width, lm.vocab_size, 1))
  out.append(MatMul("lm.extra_head", 1, tokens, lm.width, config.num_extra_tokens, 2))
  return out


def forward_flops(matmuls: list[MatMul]) -> int:
  return sum(mm.flops for mm in matmuls)


def train_step_flops(matmuls: list[MatMul]) -> int:
  """Model FLOPs of forward + backward (trainable-tree gradients), matmuls only."""
  return sum(mm.flops * (1 + mm.backward) for mm in matmuls)


# Per remat policy (layers.REMAT_POLICIES): does the backward pass recompute this forward product?
# Attention score / value products are the batched ones (batch > 1); MLP inputs are the gate / up
# projections (lm: mlp_gate_up, gated blocks and resampler: ffw_up).
_MLP_IN = (".mlp_gate_up", ".mlp_up", ".ffw_up")
_RECOMPUTED = {
    "none": lambda mm: False,
    "dots": lambda mm: False,
    "full": lambda mm: True,
    "dots_no_batch": lambda mm: mm.batch > 1,
    "minimal": lambda mm: mm.batch > 1,
    "save_dot_except_mlp_in": lambda mm: mm.batch > 1 or mm.name.endswith(_MLP_IN),
    "save_qkv": lambda mm: mm.batch > 1 or not mm.name.endswith((".q", ".kv", ".qkv")),
}


def remat_recompute_flops(matmuls: list[MatMul], remat_policy: str) -> int:
  """Forward FLOPs the backward pass recomputes under `remat_policy`: those of the products with a
  backward whose outputs the policy does not save (_RECOMPUTED)."""
  recomputed = _RECOMPUTED[remat_policy]
  return sum(mm.flops for mm in matmuls if mm.backward and recomputed(mm))
