"""The Flamingo model: frozen vision tower -> Perceiver Resampler -> LM with gated cross-attention.

Parameter tree (see `params.py` for the frozen / trainable split):
  vision/...                       frozen   VisionTransformer
  resampler/...                    trainable PerceiverResampler (or MlpProjection, resampler.kind)
  lm/embed, lm/head, lm/final_norm frozen   pretrained LM rows and norms
  lm/segment_k/block_j/...         frozen   LM blocks (see the layer plan in `lm.py`)
  lm/segment_k/xattn/...           trainable gated cross-attention + dense blocks
  lm/extra_embed, lm/extra_head    trainable rows of <image> and <EOC>
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.layers import DecodeSlots
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.resampler import MlpProjection, PerceiverResampler
from flamingo_jax.models.vision import VisionTransformer


class Flamingo(nn.Module):
  config: FlamingoConfig

  def setup(self):
    c = self.config
    self.vision = VisionTransformer(c.vision, c.execution)
    resampler = PerceiverResampler if c.resampler.kind == "perceiver" else MlpProjection
    self.resampler = resampler(c.resampler, c.execution)
    self.lm = DecoderLM(c.lm, c.execution, xattn=c.xattn, num_extra_tokens=c.num_extra_tokens)

  def encode_images(self, images: jax.Array) -> jax.Array:
    """uint8 images [B, N, F, H, W, 3] -> visual tokens [B, N, R, D_res] (R = F * S for the MLP
    projection).

    The frozen tower runs under stop_gradient: no gradient ever flows into it or its inputs.
    """
    features = jax.lax.stop_gradient(self.vision(images))
    return self.resampler(features)

  def __call__(self, tokens: jax.Array, images: jax.Array, phi: jax.Array,
               positions: jax.Array | None = None, segments: jax.Array | None = None,
               return_hidden: bool = False) -> jax.Array:
    """tokens [B, T], uint8 images [B, N, F, H, W, 3], phi [B, T] (masking.media_index) -> logits
    [B, T, V + 2] in the compute dtype (or, `return_hidden`, the final-normed states [B, T, D] the
    head reads: `lm.output_kernels`). Packed rows also pass per-example positions and segment ids
    [B, T] (data_pipelines/packing.py)."""
    return self.lm(tokens, self.encode_images(images), phi, positions, segments=segments,
                   return_hidden=return_hidden)

  def joint(self, tokens: jax.Array, phi: jax.Array, positions: jax.Array, segments: jax.Array,
            images: tuple[jax.Array, ...], shards: int = 1, return_hidden: bool = False
            ) -> jax.Array:
    """One LM pass over the rows of several datasets (`train.lm_pass=joint`) -> logits [R, T, V + 2]
    (or hidden states [R, T, D], as `__call__`).

    tokens, phi, positions, segments [R, T]: every dataset's rows joined by `join_rows(..., shards)`
    (phi counts the image slots of its own row). images: per dataset, uint8 [R_d, N_d, F_d, H, W, 3]
    in the same order. All frames go through the frozen tower in one call; each dataset's media are
    resampled with its own frame count, padded to the largest N_d with slots no phi points at, and
    joined like the text.
    """
    flat = [x.reshape(-1, *x.shape[3:]) for x in images]  # [R_d * N_d * F_d, H, W, 3]
    features = jax.lax.stop_gradient(self.vision(join_rows(flat, shards)[:, None, None]))
    parts = split_rows(features[:, 0, 0], [len(f) for f in flat], shards)
    visual = [self.resampler(part.reshape(*x.shape[:3], *part.shape[1:]))  # [R_d, N_d, R, D]
              for x, part in zip(images, parts)]
    slots = max(v.shape[1] for v in visual)
    visual = [jnp.pad(v, ((0, 0), (0, slots - v.shape[1]), (0, 0), (0, 0))) for v in visual]
    return self.lm(tokens, join_rows(visual, shards), phi, positions, segments=segments,
                   return_hidden=return_hidden)

  def decode_lm(self, tokens: jax.Array, visual: jax.Array, phi: jax.Array, positions: jax.Array,
                decode: DecodeSlots, logits_at: jax.Array | None = None) -> jax.Array:
    """One decoding call of the LM on visual tokens from `encode_images` (see `decoding.py`): tokens,
    phi, positions [B, T] -> logits [B, T, V + 2] (or, with `logits_at` [B], of that position only:
    [B, 1, V + 2]); reads and extends the `cache` collection."""
    return self.lm(tokens, visual, phi, positions, decode=decode, logits_at=logits_at)


def join_rows(arrays: list[jax.Array], shards: int) -> jax.Array:
  """Arrays [R_d, ...] (equal trailing shapes) -> [sum R_d, ...], joined so that each of `shards`
  contiguous blocks of the result holds the same block of every input: a batch sharded over `shards`
  devices stays on its devices (a plain concatenation would move rows between them)."""
  blocks = [x.reshape(shards, x.shape[0] // shards, *x.shape[1:]) for x in arrays]
  joined = jnp.concatenate(blocks, axis=1)
  return joined.reshape(-1, *joined.shape[2:])


def split_rows(joined: jax.Array, rows: list[int], shards: int) -> list[jax.Array]:
  """The inverse of `join_rows`: [sum rows, ...] -> arrays [rows_d, ...]."""
  blocks = joined.reshape(shards, -1, *joined.shape[1:])
  bounds = np.cumsum([0] + [r // shards for r in rows])
  return [blocks[:, a:b].reshape(-1, *joined.shape[1:]) for a, b in zip(bounds[:-1], bounds[1:])]


def example_inputs(config: FlamingoConfig, batch: int = 1, length: int = 8, num_images: int = 1,
                   num_frames: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Zero inputs of the right shapes and dtypes, for `init` and `jax.eval_shape`."""
  size = config.vision.image_size
  return (jnp.zeros((batch, length), jnp.int32),
          jnp.zeros((batch, num_images, num_frames, size, size, 3), jnp.uint8),
          jnp.zeros((batch, length), jnp.int32))


def abstract_params(config: FlamingoConfig):
  """The parameter tree as ShapeDtypeStructs inside their nn.Partitioned boxes; allocates nothing."""
  model = Flamingo(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(config)))["params"]
