"""Packing: `pack` examples end to end in one row, so short pairs and clips fill rows as long as the
interleaved documents' and every dataset shares one LM pass (`train.lm_pass=joint`).

A batch of B * k examples (tokens, labels, loss_mask, phi [B * k, t]; images [B * k, n, F, H, W, 3];
image_mask [B * k, n]) becomes B rows of k * t tokens, example j of a row at tokens j * t ..
(j + 1) * t - 1 with:
  segments   [B, k * t] int32: j + 1 (self-attention stays inside an example);
  positions  [B, k * t] int32: 0 .. t - 1 again for every example (rotary positions restart);
  images     [B, k * n, F, H, W, 3], image_mask [B, k * n]: example j's slots at j * n .. j * n + n - 1;
  phi        the example's own media index shifted by j * n where it points at an image (0 stays 0:
             a token of example j never sees an image of example j - 1).
Examples are padded to t by the example builder already (loss_mask 0 on the padding), so a row holds
exactly k examples: packing is a reshape, the stream's resume state is untouched, and the loss of
every example is what it was unpacked. A row of `row_tokens` > k * t tokens (DatasetConfig.row_len)
ends in padding: token 0, loss_mask 0, phi 0, segment 0 and position 0; no example attends to it
(its segment is its own) and it has no loss.
"""

from __future__ import annotations

import numpy as np

ROW_KEYS = ("tokens", "labels", "loss_mask")  # [B * k, t] -> [B, k * t] unchanged.
SLOT_KEYS = ("images", "image_mask")  # [B * k, n, ...] -> [B, k * n, ...].


def pack_rows(batch: dict[str, np.ndarray], pack: int, row_tokens: int = 0
              ) -> dict[str, np.ndarray]:
  """B * pack examples -> B packed rows of `row_tokens` (0: pack * t) tokens (module docstring);
  other keys (e.g. "counts", per example) pass through."""
  if pack == 1:
    return batch
  examples, t = batch["tokens"].shape
  if examples % pack:
    raise ValueError(f"A batch of {examples} examples cannot be packed {pack} to a row; make the "
                     "batch size a multiple of data.datasets.<name>.pack.")
  rows, slots = examples // pack, batch["image_mask"].shape[1]
  out = dict(batch)
  for key in ROW_KEYS:
    out[key] = batch[key].reshape(rows, pack * t)
  for key in SLOT_KEYS:
    out[key] = batch[key].reshape(rows, pack * slots, *batch[key].shape[2:])
  offset = (np.arange(pack, dtype=np.int32) * slots)[None, :, None]  # [1, k, 1]
  phi = batch["phi"].reshape(rows, pack, t)
  out["phi"] = np.where(phi > 0, phi + offset, 0).reshape(rows, pack * t).astype(np.int32)
  segment = np.repeat(np.arange(1, pack + 1, dtype=np.int32), t)
  out["segments"] = np.broadcast_to(segment, (rows, pack * t)).copy()
  out["positions"] = np.broadcast_to(np.tile(np.arange(t, dtype=np.int32), pack),
                                     (rows, pack * t)).copy()
  padding = (row_tokens or pack * t) - pack * t
  if padding < 0:
    raise ValueError(f"Rows of {row_tokens} tokens cannot hold {pack} examples of {t}; make "
                     "data.datasets.<name>.row_len at least pack * seq_len.")
  for key in (*ROW_KEYS, "phi", "segments", "positions"):
    out[key] = np.pad(out[key], ((0, 0), (0, padding)))
  return out


PACKING_COUNTERS = ("packed_rows", "packed_examples", "packed_loss_tokens", "packed_tokens")


def packing_counts(batch: dict[str, np.ndarray]) -> dict[str, int]:
  """{counter: value} of one packed batch (PACKING_COUNTERS): rows, examples in them (segments),
  tokens with a loss and all tokens (their ratio is the rows' use)."""
  segments = batch["segments"]
  return dict(zip(PACKING_COUNTERS, (segments.shape[0], int(segments.max(axis=1).sum()),
                                      int(batch["loss_mask"].sum()), segments.size)))
