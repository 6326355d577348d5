"""Row layouts and their validation: one input row (a dict) -> a record, or a Reject.

The layout is found per row from its keys:

* OBELICS: `texts` [str | null] and `images` [MEDIA | null], lists of equal length in reading order,
  exactly one of the two non-null at every position.
* MMC4: `text_list` [str] and `image_info` [{"image_name": str or "image_base64": str,
  "matched_text_index": int}] (or null); each image goes before its matched sentence (as
  OpenFlamingo does).
* pair: `image` MEDIA and `caption` str.
* video: `video` MEDIA (MP4, WebM, MKV, or an animated GIF / WebP / PNG) and `caption` str.

MEDIA is a file name under --image_root, bytes, or {"bytes": ...} (media.py). An optional `url` str
becomes the record's source (else the row's location). Rules: a row that breaks its layout's types
(a number where text is expected, a string where a list is, unequal lists, an index out of range)
is skipped whole, with the field named; an image that cannot be read or decoded is dropped from its
document (counted) and the rest kept; a document left with no image or no text is skipped. Text
past `max_text_bytes` or images past `max_images` end the document there (counted as cut).
"""

from __future__ import annotations

from data_pipelines import records
from data_pipelines.convert import media
from data_pipelines.convert.outcome import Outcome, Reject


def convert_row(row, limits: media.Limits, outcome: Outcome) -> None:
  """Adds the record of `row` to `outcome`; raises Reject when the row is skipped whole."""
  if not isinstance(row, dict):
    raise Reject("not_an_object", f"the row is a JSON {type(row).__name__}, expected an object")
  url = row.get("url")
  source = url if isinstance(url, str) and url else outcome.where
  # The keys with values decide first (a Parquet file of mixed layouts has every column in every
  # row, null where absent); then all keys, so that a null where a list belongs is named.
  for keys in ({k for k, v in row.items() if v is not None}, set(row)):
    if "texts" in keys or "images" in keys:
      return _obelics(row, limits, outcome, source)
    if "text_list" in keys:
      return _mmc4(row, limits, outcome, source)
    if "caption" in keys and ("image" in keys or "video" in keys):
      return _captioned(row, limits, outcome, source)
  raise Reject("unknown_layout", f"keys {sorted(row)[:20]}: expected OBELICS (texts, images), "
               "MMC4 (text_list, image_info), a pair (image, caption) or a video (video, caption)")


def text_bytes(value, field: str) -> bytes:
  """A text field (str, or UTF-8 bytes: a Parquet BYTE_ARRAY column without the string annotation)
  -> UTF-8 bytes; Reject("wrong_type" | "invalid_text" | "invalid_utf8") naming the field."""
  if isinstance(value, bytes):
    try:
      value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise Reject("invalid_utf8", f"{field}: byte {e.start}") from None
    return value
  if not isinstance(value, str):
    raise Reject("wrong_type", f"{field} is {type(value).__name__}, expected str")
  try:
    return value.encode("utf-8")
  except UnicodeEncodeError as e:  # Lone surrogates (JSON "\ud800").
    raise Reject("invalid_text", f"{field}: {e.reason} at {e.start}") from None


def _cut(data: bytes, size: int) -> bytes:
  """UTF-8 `data` cut to at most `size` bytes, at a character boundary."""
  return data[:size].decode("utf-8", "ignore").encode("utf-8")


def _list(row: dict, field: str, allow_null: bool = False) -> list:
  value = row.get(field)
  if value is None and allow_null:
    return []
  if not isinstance(value, list):
    raise Reject("wrong_type", f"{field} is {type(value).__name__}, expected a list")
  return value


class _Document:
  """Parts in reading order under the per-document caps; images checked as they are added."""

  def __init__(self, limits: media.Limits, outcome: Outcome):
    self.limits, self.outcome = limits, outcome
    self.parts: list[tuple[str, bytes]] = []
    self.text_bytes = self.images = 0
    self.ended = False  # A cap was reached: nothing after it is kept.

  def text(self, data: bytes) -> None:
    if self.ended or not data.strip():
      return
    room = self.limits.max_text_bytes - self.text_bytes
    if len(data) > room:
      data = _cut(data, room)
      self._end("max_text_bytes")
    if data:
      self.parts.append(("text", data))
      self.text_bytes += len(data)

  def image(self, load, label: str) -> None:
    """`load()` -> encoded bytes or Reject; a rejected image is dropped (counted), not fatal."""
    if self.ended:
      return
    if self.images == self.limits.max_images:
      self._end("max_images")
      return
    try:
      data = media.checked_image(load(), self.limits)
    except Reject as reject:
      self.outcome.drop(reject, label)
      return
    self.parts.append(("image", data))
    self.images += 1

  def _end(self, cap: str) -> None:
    self.ended = True
    self.outcome.cut(cap)

  def finish(self, source: str) -> None:
    if not any(kind == "text" for kind, _ in self.parts):
      raise Reject("no_text", "no text left in the document")
    if not self.images:
      raise Reject("no_images", "no readable image left in the document")
    self.outcome.write(records.interleaved(source, self.parts))


def _obelics(row: dict, limits: media.Limits, outcome: Outcome, source: str) -> None:
  texts, images = _list(row, "texts"), _list(row, "images")
  if len(texts) != len(images):
    raise Reject("length_mismatch", f"{len(texts)} texts but {len(images)} images")
  checked = []
  for i, (text, image) in enumerate(zip(texts, images)):
    if (text is None) == (image is None):
      both = "both a text and an image" if text is not None else "neither a text nor an image"
      raise Reject("bad_position", f"position {i} holds {both}")
    checked.append(("text", text_bytes(text, f"texts[{i}]")) if text is not None else
                   ("image", image))
  document = _Document(limits, outcome)
  for i, (kind, value) in enumerate(checked):
    if kind == "text":
      document.text(value)
    else:
      document.image(lambda value=value: media.load(value, limits), f"images[{i}]")
  document.finish(source)


def _mmc4(row: dict, limits: media.Limits, outcome: Outcome, source: str) -> None:
  sentences = [text_bytes(s, f"text_list[{i}]") for i, s in enumerate(_list(row, "text_list"))]
  before = [[] for _ in sentences]  # Sentence index -> (label, image value loader) before it.
  for i, info in enumerate(_list(row, "image_info", allow_null=True)):
    label = f"image_info[{i}]"
    if not isinstance(info, dict):
      raise Reject("wrong_type", f"{label} is {type(info).__name__}, expected an object")
    index = info.get("matched_text_index")
    if type(index) is not int or not 0 <= index < len(sentences):
      raise Reject("bad_matched_text_index", f"{label}.matched_text_index is {index!r}; the "
                   f"document has {len(sentences)} sentences")
    if info.get("image_base64") is not None:
      load = lambda info=info: media.from_base64(info["image_base64"])
    elif info.get("image_name") is not None:
      load = lambda info=info: media.load(info["image_name"], limits)
    else:
      raise Reject("no_image_field", f"{label} has neither image_base64 nor image_name")
    before[index].append((label, load))
  document = _Document(limits, outcome)
  for sentence, images in zip(sentences, before):
    for label, load in images:
      document.image(load, label)
    document.text(sentence)
  document.finish(source)


def _captioned(row: dict, limits: media.Limits, outcome: Outcome, source: str) -> None:
  caption = text_bytes(row["caption"], "caption")
  if row.get("video") is not None or "image" not in row:
    captioned(outcome, source, media.load(row["video"], limits), caption, limits, as_video=True)
  else:
    captioned(outcome, source, media.load(row["image"], limits), caption, limits, as_video=False)


def captioned(outcome: Outcome, source: str, data: bytes, caption: bytes, limits: media.Limits,
              as_video: bool) -> None:
  """Writes a pair (an image) or a video (a video file or an animated image: 1 fps frames) with its
  caption (UTF-8 bytes, cut at max_text_bytes); Reject when either is unusable."""
  caption = caption.strip()
  if not caption:
    raise Reject("no_text", "empty caption")
  if len(caption) > limits.max_text_bytes:
    caption = _cut(caption, limits.max_text_bytes)
    outcome.cut("max_text_bytes")
  if as_video:
    frames, times, cut = media.video_frames(data, limits)
    if cut:
      outcome.cut("max_video_seconds")
    outcome.write(records.video(source, frames, times, caption))
  else:
    outcome.write(records.pair(source, media.checked_image(data, limits), caption))
