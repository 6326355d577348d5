"""Which image each text token may see: the media index phi and the cross-attention mask.

Images are numbered 1..N in the order of their `<image>` tokens; phi = 0 means "no image".

* Previous-image rule (paper default): phi(l) = number of `<image>` tokens at positions <= l, so the
  `<image>` token itself and every token after it, up to the next `<image>`, see that image; tokens
  before the first `<image>` see none.
* `p_next` rule (training augmentation, chosen per document): a token sees the first image at or after
  it, phi(l) = (number of `<image>` tokens at positions < l) + 1. The `<image>` token still sees its own
  image. Tokens after the document's last image have no next image and keep the last one.

Tokens whose phi is 0 (or points past the images supplied) get exactly zero cross-attention output
(see `gated_xattn.py`). The paper's ablation `XAttnConfig.media_attention="all_previous"` lets token l
attend to every image 1..phi(l) instead of image phi(l) alone.

IDEFICS (v1) correspondence: its processor's `image_attention_mask` [B, T, N] is one-hot(phi - 1)
under the previous-image rule (a running count of `<image>` tokens, the `<image>` token included),
its `cross_attention_gate` is `has_image`; `<fake_token_around_image>` around each `<image>` is an
ordinary token with no role here. Its processor also drops attention after an EOS inside a packed
sequence, which phi does not model (our examples hold one document each).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def media_index(tokens, image_token_id: int, attend_next=False):
  """tokens [B, T] int -> phi [B, T] int32; `attend_next` [B] bool (or a bool) picks the p_next rule.

  Works on numpy arrays (data pipelines, on the host) and on jax arrays (in a jitted step) alike.
  """
  xp = np if isinstance(tokens, np.ndarray) else jnp
  is_image = (tokens == image_token_id).astype(np.int32)
  previous = xp.cumsum(is_image, axis=-1)  # Images at positions <= l.
  num_images = previous[:, -1:]
  following = xp.minimum(previous - is_image + 1, num_images)  # First image at or after l.
  attend_next = xp.broadcast_to(xp.asarray(attend_next, bool), tokens.shape[:1])
  return xp.where(attend_next[:, None], following, previous).astype(np.int32)


def cross_attention_mask(phi: jax.Array, num_images: int, tokens_per_image: int,
                         all_previous: bool = False) -> jax.Array:
  """phi [B, T] -> mask [B, 1, T, N * R]: token l may attend to the R tokens of image phi(l) only,
  or with `all_previous` (XAttnConfig.media_attention="all_previous") to those of images 1..phi(l)."""
  image_of_key = jnp.repeat(jnp.arange(1, num_images + 1), tokens_per_image)  # [N * R]
  phi, image_of_key = phi[:, None, :, None], image_of_key[None, None, None, :]
  return image_of_key <= phi if all_previous else phi == image_of_key


def has_image(phi: jax.Array, num_images: int) -> jax.Array:
  """phi [B, T] -> [B, T] bool: the token has an image to attend to."""
  return (phi >= 1) & (phi <= num_images)
