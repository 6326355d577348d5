"""A synthetic captioning stream with the mixture interface, for smoke runs, tests and benchmarks.

Each example repeats chunks `<image> <colour word> <EOC>` up to `seq_len` tokens with at most
`max_images` images; image i is a square of one of COLOURS on a noisy background (the same picture in
each of its `num_frames` frames) and its colour word is a fixed vocabulary id, so only the images
reveal the colour. Batches are a pure function of (seed, split, dataset, step): the state is the step count,
and each process takes its own contiguous slice of the global batch, so P processes together see
exactly the batch one process sees.
"""

from __future__ import annotations

import zlib
from typing import Mapping

import numpy as np

from data_pipelines.packing import pack_rows
from flamingo_jax.config import DataConfig
from flamingo_jax.models import masking

COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]], np.float32)
FIRST_COLOUR_WORD = 10  # Vocabulary id of the first colour word; the others follow.


def captioned_squares(rng: np.random.Generator, batch: int, seq_len: int, max_images: int,
                      num_frames: int, image_size: int, image_token_id: int,
                      eoc_token_id: int) -> dict[str, np.ndarray]:
  """One batch in the mixture format (see `SyntheticMixture`)."""
  num_images = min(max_images, seq_len // 3)
  if num_images < 1:
    raise ValueError(f"seq_len={seq_len} cannot hold one chunk of 3 tokens.")
  colours = rng.integers(0, len(COLOURS), (batch, num_images))
  pixels = rng.normal(0.2, 0.1, (batch, max_images, 1, image_size, image_size, 3))
  lo, hi = image_size // 4, 3 * image_size // 4
  pixels[:, :num_images, :, lo:hi, lo:hi, :] += COLOURS[colours][:, :, None, None, None, :] - 0.2
  images = (np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
  images = np.repeat(images, num_frames, axis=2)
  images[:, num_images:] = 0
  tokens = np.full((batch, seq_len), eoc_token_id, np.int32)
  for i in range(num_images):
    tokens[:, 3 * i] = image_token_id
    tokens[:, 3 * i + 1] = FIRST_COLOUR_WORD + colours[:, i]
  labels = np.concatenate([tokens[:, 1:], np.full((batch, 1), eoc_token_id, np.int32)], axis=1)
  loss_mask = np.zeros((batch, seq_len), np.float32)
  loss_mask[:, :3 * num_images - 1] = 1.0
  loss_mask[:, 3 * np.arange(num_images - 1) + 2] = 0.0  # <EOC> -> <image>: images are given.
  image_mask = np.zeros((batch, max_images), bool)
  image_mask[:, :num_images] = True
  return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "images": images,
          "image_mask": image_mask, "phi": masking.media_index(tokens, image_token_id)}


class SyntheticMixture:
  """Iterator of {dataset: batch}; batch keys tokens, labels, loss_mask [B, T], images
  [B, N, F, H, W, 3] uint8, image_mask [B, N], phi [B, T] (B = global batch / process_count),
  packed `pack` examples to a row as the shard streams are (packing.py)."""

  def __init__(self, data: DataConfig, *, image_size: int, image_token_id: int, eoc_token_id: int,
               split: str = "train", process_index: int = 0, process_count: int = 1):
    self._datasets = data.selected()
    for name, spec in self._datasets.items():
      if spec.batch_size % (process_count * spec.pack):
        raise ValueError(f"data.datasets.{name}.batch_size={spec.batch_size} is not divisible by "
                         f"the {process_count} processes x pack={spec.pack}.")
    self._names = sorted(self._datasets)
    self._ids = dict(image_size=image_size, image_token_id=image_token_id, eoc_token_id=eoc_token_id)
    self._seed, self._accumulation = [data.seed, zlib.crc32(split.encode())], data.accumulation
    self._process_index, self._process_count = process_index, process_count
    self._step = 0

  @property
  def loss_weights(self) -> dict[str, float]:
    return {name: spec.loss_weight for name, spec in self._datasets.items()}

  def counters(self) -> dict[str, int]:
    return {}  # Synthetic records are never malformed.

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: Mapping) -> None:
    self._step = int(state["step"])

  def __iter__(self):
    return self

  def _batch(self, name: str) -> dict[str, np.ndarray]:
    spec = self._datasets[name]
    rng = np.random.default_rng([*self._seed, zlib.crc32(name.encode()), self._step])
    full = captioned_squares(rng, spec.batch_size, spec.seq_len, spec.max_images, spec.num_frames,
                             **self._ids)
    per_process = spec.batch_size // self._process_count
    start = self._process_index * per_process
    return pack_rows({k: v[start:start + per_process] for k, v in full.items()}, spec.pack,
                     spec.row_tokens)

  def __next__(self) -> dict[str, dict[str, np.ndarray]]:
    if self._accumulation == "all":
      names = self._names
    else:
      names = [self._names[self._step % len(self._names)]]
    out = {name: self._batch(name) for name in names}
    self._step += 1
    return out
