"""Input sources: `Converter` holds a source's options, splits an input into units (inputs.py) and
turns one unit into records. Converting runs on any worker and never raises: whatever goes wrong
becomes a counted reject.

* jsonl: one row per line (rows.py layouts); gzip or zstd by their magic bytes; a UTF-8 BOM
  is dropped; a line that is not UTF-8 or not JSON is skipped; a truncated stream keeps every
  line before the break.
* parquet: one row per table row (rows.py layouts), read row group by row group.
* wds: WebDataset tars (optionally gzip / zstd), members grouped by key (the name up to its first
  dot): KEY.jpg|png|... + KEY.txt -> a pair; KEY.mp4|webm|mkv|... or an animated GIF / WebP +
  KEY.txt -> a video; KEY.json (a rows.py layout, images as base64) -> a document.
* folder: NAME.jpg|png|... + NAME.txt -> a pair; NAME.mp4|webm|mkv|... or an animated image +
  NAME.txt -> a video (1 fps); a sub-folder of frames (name order, frame i at i s) with
  caption.txt -> a video.
* tfds: a prepared TFDS dataset (nothing is downloaded) with an image and captions -> one pair per
  caption (an empty or non-UTF-8 one is dropped); arrays are stored as JPEG (quality 95).

A media file or tar member over max_file_bytes is not read. File and member names need not be
UTF-8: units carry folder names as bytes, and where / sources show undecodable bytes as \\xNN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Iterator

import numpy as np

from data_pipelines import images, records, video
from data_pipelines.convert import inputs, media, rows
from data_pipelines.convert.inputs import BOM, Unit
from data_pipelines.convert.outcome import Outcome, Reject



class SourceError(ValueError):
  """A source that cannot be read as a whole (tfds: a dataset not prepared, a split it lacks); the
  message is one line."""


@dataclasses.dataclass(frozen=True)
class Converter:
  """One source's options; `units(path)` splits an input, `convert(unit)` makes its records."""
  source: str  # One of SOURCES.
  limits: media.Limits = media.Limits()
  tfds_name: str | None = None
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  image_key: str = "image"
  caption_key: str = "captions/text"  # A feature path; a sequence gives one pair per caption.

  def units(self, path: str) -> Iterator[Unit]:
    tar_units = functools.partial(inputs.tar_units, max_bytes=self.limits.max_file_bytes)
    return {"jsonl": inputs.jsonl_units, "parquet": inputs.parquet_units, "wds": tar_units,
            "folder": inputs.folder_units, "tfds": self._tfds_units}[self.source](path)

  def check(self) -> None:
    """SourceError when the source as a whole cannot be read (tfds: the dataset is not prepared
    under data_dir, or lacks the split); the other sources check each input as they read it."""
    if self.source != "tfds":
      return
    try:
      len(self._tfds_source())
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, ValueError, ...).
      first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
      raise SourceError(f"tfds cannot read {self.tfds_name!r} split {self.tfds_split!r} "
                        f"(data_dir {self.tfds_data_dir or 'default'}): {first.strip()}") from None

  def convert(self, unit: Unit) -> Outcome:
    where, payload, error = unit
    outcome = Outcome(where)
    try:
      if error is not None:
        raise Reject(*error)
      convert = {"jsonl": self._jsonl_line, "parquet": self._row, "wds": self._tar_sample,
                 "folder": self._folder_entry, "tfds": self._tfds_example}[self.source]
      convert(payload, outcome)
    except Reject as reject:
      outcome.skip(reject)
    except Exception as e:  # A bug of ours: counted and logged, never a lost run.
      outcome.skip(Reject("internal_error", f"{type(e).__name__}: {e}"))
    return outcome

  def _jsonl_line(self, line: bytes, outcome: Outcome) -> None:
    try:
      text = line.removeprefix(BOM).decode("utf-8")  # A BOM on any line: files joined with cat.
    except UnicodeDecodeError as e:
      raise Reject("invalid_utf8", f"byte {e.start}") from None
    try:
      row = json.loads(text)
    except (ValueError, RecursionError) as e:
      raise Reject("bad_json", str(e)[:200]) from None
    rows.convert_row(row, self.limits, outcome)

  def _row(self, row: dict, outcome: Outcome) -> None:
    rows.convert_row(row, self.limits, outcome)

  def _tar_sample(self, sample: dict[str, bytes], outcome: Outcome) -> None:
    key = outcome.where.rsplit(":", 1)[-1]
    media_ext = next((e for e in sample if inputs.is_media(f".{e}")), None)  # Names: ".mp4", ".jpg"...
    if media_ext is not None and "txt" in sample:
      rows.captioned(outcome, key, sample[media_ext], _utf8(sample["txt"], "txt"), self.limits,
                     as_video=_is_video(f".{media_ext}", sample[media_ext]))
    elif "json" in sample and media_ext is None:
      self._jsonl_line(sample["json"], outcome)
    else:
      raise Reject("incomplete_sample", f"members {sorted(sample)}: expected an image or video "
                   "with a .txt, or a .json document")

  def _folder_entry(self, entry: dict, outcome: Outcome) -> None:
    entry = inputs.names_as(os.fsdecode, entry)
    root, limits = entry["root"], self.limits
    if "frames" in entry:
      return self._frame_folder(entry, outcome)
    if entry["caption"] is None:
      raise Reject("missing_caption", f"no {os.path.splitext(entry['media'])[0]}.txt")
    caption = _utf8(media.read_file(media.inside(root, entry["caption"]), limits), "caption")
    data = media.read_file(media.inside(root, entry["media"]), limits)
    rows.captioned(outcome, entry["media"], data, caption, limits,
                   as_video=_is_video(entry["media"], data))

  def _frame_folder(self, entry: dict, outcome: Outcome) -> None:
    root, limits, folder = entry["root"], self.limits, entry["frames"]
    caption = _utf8(media.read_file(media.inside(root, f"{folder}/caption.txt"), limits), "caption")
    frames, times = [], []
    for second, name in enumerate(entry["names"][:limits.max_video_seconds]):
      try:
        data = media.read_file(media.inside(root, f"{folder}/{name}"), limits)
        frames.append(media.checked_image(data, limits))
        times.append(float(second))
      except Reject as reject:
        outcome.drop(reject, name)
    if len(entry["names"]) > limits.max_video_seconds:
      outcome.cut("max_video_seconds")
    if not frames:
      raise Reject("no_frames", "no readable frame")
    caption = caption.strip()
    if not caption:
      raise Reject("no_text", "empty caption.txt")
    outcome.write(records.video(folder, frames, times, caption))

  def _tfds_units(self, _) -> Iterator[Unit]:
    for i in range(len(self._tfds_source())):
      yield f"{self.tfds_name}/{self.tfds_split}:{i}", i, None

  def _tfds_source(self):
    return _tfds_source(self.tfds_name, self.tfds_split, self.tfds_data_dir)

  def _tfds_example(self, index: int, outcome: Outcome) -> None:
    """One pair per usable caption; a caption that is empty or not UTF-8 is dropped (counted), an
    example with no usable caption or an unusable image is skipped."""
    try:
      example = self._tfds_source()[index]
    except Exception as e:  # A record tfds cannot read or decode.
      raise Reject("unreadable_example", f"{type(e).__name__}: {e}") from None
    image = _tfds_jpeg(_feature(example, self.image_key), self.limits)
    captions = _feature(example, self.caption_key)
    captions = ([captions] if isinstance(captions, (str, bytes)) else
                list(np.asarray(captions, dtype=object).reshape(-1)))
    usable, bad = [], []
    for i, caption in enumerate(captions):
      try:
        usable.append(_tfds_caption(caption))
      except Reject as reject:
        bad.append((reject, f"{self.caption_key}[{i}]"))
    if not usable:
      raise bad[0][0] if bad else Reject("no_text", f"{self.caption_key} holds no caption")
    for reject, part in bad:
      outcome.drop(reject, part)
    for caption in usable:
      rows.captioned(outcome, outcome.where, image, caption, self.limits, as_video=False)


@functools.cache
def _tfds_source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def _feature(example: dict, path: str):
  """The value at a feature path ("captions/text") of a TFDS example; Reject("missing_feature")."""
  value = example
  for key in path.split("/"):
    if not isinstance(value, dict) or key not in value:
      keys = sorted(value) if isinstance(value, dict) else type(value).__name__
      raise Reject("missing_feature", f"no {path!r} in the example ({key!r} not in {keys})")
    value = value[key]
  return value


def _tfds_jpeg(value, limits: media.Limits) -> bytes:
  """A TFDS image ([H, W, 3] or [H, W(, 1)] uint8) -> JPEG (quality 95); Reject when it is not one
  or has more than max_pixels pixels."""
  array = np.asarray(value)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if (array.dtype != np.uint8 or not array.size or
      not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3))):
    raise Reject("bad_image_array", f"{array.dtype} array of shape {array.shape}; expected "
                 "[H, W, 3] uint8")
  try:
    images.check_pixels(array.shape[1::-1], limits.max_pixels)
  except images.BadImage as bad:
    raise Reject(bad.reason, str(bad)) from None
  return images.encode_jpeg(array, quality=95)


def _tfds_caption(value) -> bytes:
  data = bytes(value) if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
  data = _utf8(data, "caption").strip()
  if not data:
    raise Reject("no_text", "empty caption")
  return data


def _utf8(data: bytes, field: str) -> bytes:
  """`data` without a leading BOM (Windows editors write one) if it is UTF-8; Reject otherwise."""
  return rows.text_bytes(data, field).removeprefix(BOM)


def _is_video(name: str, data: bytes) -> bool:
  return video.is_video_name(name) or video.is_animated(data)
