"""Record -> one fixed-shape training example, as a grain RandomMap operation.

Every example is a dict (T = seq_len, N = max_images, F = num_frames, H = W = image_size):

  tokens [T] int32, labels [T] int32 (the next token), loss_mask [T] float32,
  images [N, F, H, W, 3] uint8 (zeros in padded slots), image_mask [N] bool,
  phi [T] int32 (`flamingo_jax.models.masking.media_index`), counts [len(COUNTERS)] int64.

A skipped record becomes `{"counts": ...}` alone (+ `"unreadable": shard path` for a
records.Unreadable); `streams.SkipInvalid` drops it and carries its counts into the next example, so
counters survive worker processes and checkpoints.

Token layout
* interleaved: `<BOS> text <EOC><image> text <EOC><image> text ... <EOC><EOS>`: `<EOC>` before every
  `<image>` that has tokens other than `<BOS>` before it, and at the end. A random window of T tokens
  (its start at most at the last `<image>`; evaluation: the start) is kept; if it holds more than N
  `<image>` tokens it ends just before the (N+1)-th (counted once as "images_over_cap"). `attend_next`
  is drawn per document with probability p_next (evaluation: False).
* pairs and video: `<BOS><image>caption<EOC><EOS>`; in training a space is prepended to the caption with
  p = 0.5. A caption longer than T - 4 tokens is cut (counted "text_truncated").

Loss-mask rule (one rule for all kinds): position t is trained to predict labels[t] iff labels[t] is a
token of the document (not padding, not past the document's end), labels[t] is not `<image>` (images
are given, never predicted), and phi[t] >= 1 (the token sees an image). So under the previous-image
rule text before the first image of the window carries no loss (it sees no image); under p_next it
does (it sees the next image). Nothing lies between an `<EOC>` and the next `<image>` in this layout;
the `<EOC>` itself predicts `<image>` and is masked, the text before it is trained to predict `<EOC>`.

Skip and truncation rules (counter names in COUNTERS):
* an image that is empty, corrupt or truncated, or larger than max_pixels: dropped from an interleaved
  document (with its `<image>`), the whole record skipped for pairs; a bad video frame is dropped.
* text that is not UTF-8: the segment is dropped from an interleaved document, a pair / video skipped.
* interleaved document with no image (after drops) or no text: skipped ("no_images", "no_text").
* video with fewer than F frames (after drops): skipped ("too_few_frames"); longer: F consecutive
  frames (random start in training, centred in evaluation).
* a record that does not parse: skipped ("malformed_record").
* a record its shard could not give (records.Unreadable: a corrupt chunk, a shard truncated or
  replaced since the stream started; `streams.ShardSource` logs it): skipped ("unreadable_record").
* more than streams.MAX_CONSECUTIVE_SKIPS (1000) skipped records in a row: an error naming the dataset.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from data_pipelines import images as image_ops
from data_pipelines import records
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.models import masking

COUNTERS = ("records", "skipped", "empty_image", "corrupt_image", "enormous_image", "non_utf8_text",
            "no_images", "no_text", "images_over_cap", "text_truncated", "too_few_frames",
            "malformed_record", "unreadable_record")
_INDEX = {name: i for i, name in enumerate(COUNTERS)}


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  kind: str  # "interleaved" | "pairs" | "video"
  seq_len: int  # T
  max_images: int  # N (1 for pairs and video)
  num_frames: int  # F (1 for still images)
  image_size: int  # H = W
  p_next: float = 0.0  # Interleaved only.
  train: bool = True  # Augmentation, random windows, p_next and the caption space.
  random_flip: bool = True  # Training flips images with p = 0.5 (off where text says left / right).
  max_pixels: int = image_ops.DEFAULT_MAX_PIXELS
  # False (the text-only LM stage, which never looks at them): images are not decoded, their slots
  # stay zero, and a corrupt image is not noticed (nor counted).
  decode_images: bool = True

  def __post_init__(self):
    if self.kind not in records.KINDS:
      raise ValueError(f"kind={self.kind!r}; expected one of {records.KINDS}.")
    if self.kind != "interleaved" and self.max_images != 1:
      raise ValueError(f"kind={self.kind!r} holds one image per example; set max_images=1.")
    if self.kind != "video" and self.num_frames != 1:
      raise ValueError(f"kind={self.kind!r} has still images; set num_frames=1.")
    if self.seq_len < 5:
      raise ValueError(f"seq_len={self.seq_len} is too short; it must be at least 5.")


class _Skip(Exception):
  def __init__(self, reason: str):
    self.reason = reason


class ToExample(grain.transforms.RandomMap):
  """Encoded record bytes -> an example (see the module docstring), deterministic for the rng."""

  def __init__(self, spec: ExampleSpec, tokenizer: Tokenizer):
    self.spec, self.tok = spec, tokenizer

  def random_map(self, data: bytes | records.Unreadable, rng: np.random.Generator) -> dict:
    counts = np.zeros(len(COUNTERS), np.int64)
    counts[_INDEX["records"]] = 1
    if isinstance(data, records.Unreadable):
      counts[[_INDEX["unreadable_record"], _INDEX["skipped"]]] += 1
      return {"counts": counts, "unreadable": data.shard}
    try:
      try:
        record = records.decode_record(data)
      except records.SchemaError as e:
        raise _Skip("malformed_record") from e
      if record.kind != self.spec.kind:
        raise _Skip("malformed_record")
      build = {"interleaved": self._interleaved, "pairs": self._captioned, "video": self._captioned}
      example = build[self.spec.kind](record, rng, counts)
    except _Skip as skip:
      counts[_INDEX[skip.reason]] += 1
      counts[_INDEX["skipped"]] += 1
      return {"counts": counts}
    example["counts"] = counts
    return example

  # Interleaved documents.
  def _interleaved(self, record: records.Record, rng: np.random.Generator, counts: np.ndarray) -> dict:
    spec, tok = self.spec, self.tok
    items = []  # ("text", ids) or ("image", encoded bytes), in reading order.
    for part in record.parts:
      if part.type == "image":
        items.append(("image", part.data))
        continue
      try:
        text = part.data.decode("utf-8")
      except UnicodeDecodeError:
        counts[_INDEX["non_utf8_text"]] += 1
        continue
      if text.strip():
        items.append(("text", tok.encode(text)))
    if not any(kind == "text" for kind, _ in items):
      raise _Skip("no_text")
    attend_next = bool(spec.train and rng.random() < spec.p_next)
    decoded = {}  # Item index -> [H, W, 3] uint8.
    while True:
      if not any(kind == "image" for kind, _ in items):
        raise _Skip("no_images")
      tokens, item_at = self._layout(items)
      image_positions = [p for p, t in enumerate(tokens) if t == tok.image_id]
      last_start = max(0, min(len(tokens) - spec.seq_len, image_positions[-1]))
      start = int(rng.integers(0, last_start + 1)) if spec.train else 0
      end = min(start + spec.seq_len, len(tokens))
      in_window = [p for p in image_positions if start <= p < end]
      over_cap = len(in_window) > spec.max_images
      if over_cap:
        end = in_window[spec.max_images]
        in_window = in_window[:spec.max_images]
      failed = []
      for p in in_window:
        if item_at[p] not in decoded:
          try:
            decoded[item_at[p]] = self._decode(items[item_at[p]][1], self._augmentation(rng))
          except image_ops.BadImage as bad:
            counts[_INDEX[bad.reason]] += 1
            failed.append(item_at[p])
      if not failed:
        break
      # Drop the failed images and lay out again; decoded images keep their item indices mapped.
      keep = [i for i in range(len(items)) if i not in failed]
      decoded = {keep.index(i): v for i, v in decoded.items()}
      items = [items[i] for i in keep]
    counts[_INDEX["images_over_cap"]] += int(over_cap)
    pixels = [decoded[item_at[p]][None] for p in in_window]  # [1, H, W, 3] each.
    return self._finish(tokens[start:end], tokens[start + 1:end + 1], pixels, attend_next)

  def _layout(self, items) -> tuple[list[int], dict[int, int]]:
    """Items -> document tokens and {position of an <image> token: item index}."""
    tok = self.tok
    tokens, item_at = [tok.bos_id], {}
    for i, (kind, value) in enumerate(items):
      if kind == "text":
        tokens.extend(value)
      else:
        if len(tokens) > 1:
          tokens.append(tok.eoc_id)
        item_at[len(tokens)] = i
        tokens.append(tok.image_id)
    tokens.extend([tok.eoc_id, tok.eos_id])
    return tokens, item_at

  def _decode(self, data: bytes, aug: image_ops.Augmentation) -> np.ndarray:
    """[H, W, 3] uint8 pixels of an encoded image (zeros without `decode_images`)."""
    size = self.spec.image_size
    if not self.spec.decode_images:
      return np.zeros((size, size, 3), np.uint8)
    return image_ops.decode(data, size, aug, self.spec.max_pixels)

  def _augmentation(self, rng: np.random.Generator) -> image_ops.Augmentation:
    if not self.spec.train:
      return image_ops.Augmentation()
    return image_ops.Augmentation.draw(rng, self.spec.random_flip)

  # Pairs and video.
  def _captioned(self, record: records.Record, rng: np.random.Generator, counts: np.ndarray) -> dict:
    spec, tok = self.spec, self.tok
    texts, frames = record.texts, record.images
    if len(texts) != 1 or not frames:
      raise _Skip("malformed_record")
    try:
      caption = texts[0].data.decode("utf-8").strip()
    except UnicodeDecodeError:
      raise _Skip("non_utf8_text") from None
    if not caption:
      raise _Skip("no_text")
    if spec.train and rng.random() < 0.5:
      caption = " " + caption
    caption_ids = tok.encode(caption)
    if len(caption_ids) > spec.seq_len - 4:
      counts[_INDEX["text_truncated"]] += 1
      caption_ids = caption_ids[:spec.seq_len - 4]
    tokens = [tok.bos_id, tok.image_id] + caption_ids + [tok.eoc_id, tok.eos_id]
    frames = sorted(frames, key=lambda f: f.time or 0.0)
    aug = self._augmentation(rng)
    while True:
      if len(frames) < spec.num_frames:
        raise _Skip("too_few_frames")
      free = len(frames) - spec.num_frames
      first = int(rng.integers(0, free + 1)) if spec.train else free // 2
      chosen, pixels = frames[first:first + spec.num_frames], []
      for frame in chosen:
        try:
          pixels.append(self._decode(frame.data, aug))
        except image_ops.BadImage as bad:
          if spec.kind == "pairs":
            raise _Skip(bad.reason) from None
          counts[_INDEX[bad.reason]] += 1
          frames = [f for f in frames if f is not frame]
          break
      else:
        break
    return self._finish(tokens, tokens[1:], [np.stack(pixels)], attend_next=False)

  def _finish(self, tokens: list[int], labels: list[int], pixels: list[np.ndarray],
              attend_next: bool) -> dict:
    """Pads to the fixed shapes and applies the loss-mask rule. `pixels`: one [F, H, W, 3] per image."""
    spec, tok = self.spec, self.tok
    t, n = spec.seq_len, spec.max_images
    token_arr = np.full(t, tok.pad_id, np.int32)
    token_arr[:len(tokens)] = tokens
    label_arr = np.full(t, tok.pad_id, np.int32)
    label_arr[:len(labels)] = labels
    phi = masking.media_index(token_arr[None], tok.image_id, attend_next)[0]
    loss_mask = ((np.arange(t) < len(labels)) & (label_arr != tok.image_id) & (phi >= 1))
    image_arr = np.zeros((n, spec.num_frames, spec.image_size, spec.image_size, 3), np.uint8)
    image_mask = np.zeros(n, bool)
    for i, p in enumerate(pixels):
      image_arr[i], image_mask[i] = p, True
    return {"tokens": token_arr, "labels": label_arr, "loss_mask": loss_mask.astype(np.float32),
            "images": image_arr, "image_mask": image_mask, "phi": phi}
