"""A synthetic image-captioning task generated in-process, for the quickstart and smoke tests.

Each example holds `num_images` chunks `<image> <colour word> <EOC>`; image i is a square of one of
COLOURS on a noisy background, and its colour word is a fixed vocabulary id. The colour can only be
predicted by looking at the image, so the loss on colour words measures whether the gated
cross-attention carries visual information into the LM.
"""

from __future__ import annotations

import numpy as np

COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]], np.float32)
FIRST_COLOUR_WORD = 10  # Vocabulary id of the first colour word; the others follow.


def captioned_squares(rng: np.random.Generator, batch: int, seq_len: int, num_images: int,
                      image_size: int, image_token_id: int, eoc_token_id: int) -> dict[str, np.ndarray]:
  """{"tokens" [B, T] int32, "images" [B, N, 1, H, W, 3] uint8, "labels" [B, T] int32
  (next token), "loss_mask" [B, T] float32 (1 where the next token is a colour word or <EOC>),
  "colour_mask" [B, T] float32 (1 where the next token is a colour word)}."""
  if seq_len < 3 * num_images + 1:
    raise ValueError(f"seq_len={seq_len} cannot hold {num_images} chunks of 3 tokens.")
  colours = rng.integers(0, len(COLOURS), (batch, num_images))
  images = rng.normal(0.2, 0.1, (batch, num_images, 1, image_size, image_size, 3))
  lo, hi = image_size // 4, 3 * image_size // 4
  images[:, :, :, lo:hi, lo:hi, :] += COLOURS[colours][:, :, None, None, None, :] - 0.2
  images = (np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  tokens = np.zeros((batch, seq_len), np.int32)
  colour_at = np.zeros((batch, seq_len), bool)
  for i in range(num_images):
    tokens[:, 3 * i] = image_token_id
    tokens[:, 3 * i + 1] = FIRST_COLOUR_WORD + colours[:, i]
    tokens[:, 3 * i + 2] = eoc_token_id
    colour_at[:, 3 * i] = True  # Predicting position 3i+1 (the colour word) from position 3i.
  labels = np.concatenate([tokens[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
  loss_mask = np.zeros((batch, seq_len), np.float32)
  loss_mask[:, :3 * num_images - 1] = 1.0
  loss_mask[:, 3 * np.arange(num_images) + 2] = 0.0  # <EOC> -> next <image> is not a caption token.
  return {"tokens": tokens, "images": images, "labels": labels, "loss_mask": loss_mask,
          "colour_mask": colour_at.astype(np.float32)}
