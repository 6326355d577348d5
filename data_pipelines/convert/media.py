"""Images and videos named by a row: read from inside the media root, checked, sampled at 1 fps.

A media value is a file name relative to `--image_root` (str), the bytes themselves (Parquet, tar
members), `{"bytes": ...}` (Hugging Face datasets' Image feature) or, for MMC4, base64 text. A name
is resolved with its symlinks and must stay inside the root: `../x.jpg`, `/etc/passwd` or a link
that leads out is refused ("path_outside_root"), never read. Every image is decoded once (JPEGs at
1/8 scale, under the per-call pixel limit) so that an unreadable one is counted here rather than
stored; its bytes are stored as they came.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import stat

from data_pipelines import images, paths, video
from data_pipelines.convert.outcome import Reject


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-call limits of a conversion (flags of the same names)."""
  image_root: str | None = None  # Folder that media file names are relative to.
  max_pixels: int = images.DEFAULT_MAX_PIXELS  # Per image or video frame (width * height).
  max_video_seconds: int = 600  # Frames kept per video (1 fps); later seconds are left out.
  max_text_bytes: int = 1 << 20  # Per document: text past this is cut (counted).
  max_images: int = 64  # Per document: images past this are cut (counted).
  max_file_bytes: int = 1 << 30  # A media file larger than this is refused before reading.


def inside(root: str, name: str) -> str:
  """The real path of `name` under `root`; Reject("path_outside_root") if it leads out of it."""
  if not isinstance(name, str) or not name or "\0" in name:
    raise Reject("bad_media_name", repr(name)[:200])
  path = paths.under(root, name)
  if path is None:
    raise Reject("path_outside_root", f"{name!r} resolves outside {os.path.realpath(root)}")
  return path


def read_file(path: str, limits: Limits) -> bytes:
  """The bytes of a media file; Reject("missing_media" | "unreadable_media" | "not_a_file" |
  "file_too_large"). Only a regular file is opened: a FIFO would block the worker forever, a device
  never ends."""
  try:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
      raise Reject("not_a_file", f"{path}: a directory, FIFO, socket or device")
    if info.st_size > limits.max_file_bytes:
      raise Reject("file_too_large", f"{path}: over {limits.max_file_bytes} bytes")
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise Reject("missing_media", path) from None
  except OSError as e:
    raise Reject("unreadable_media", f"{path}: {e.strerror or e}") from None


def load(value, limits: Limits) -> bytes:
  """A media value (see the module docstring) -> its encoded bytes."""
  if isinstance(value, dict) and "bytes" in value:
    value = value["bytes"]
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value)
  if isinstance(value, str):
    if limits.image_root is None:
      raise Reject("no_media_root", f"the row names {value[:200]!r}; pass --image_root")
    return read_file(inside(limits.image_root, value), limits)
  raise Reject("wrong_type", f"media is {type(value).__name__}, expected a file name or bytes")


def from_base64(text) -> bytes:
  if not isinstance(text, str):
    raise Reject("wrong_type", f"image_base64 is {type(text).__name__}, expected str")
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise Reject("bad_base64", str(e)) from None


def checked_image(data: bytes, limits: Limits) -> bytes:
  """`data` if it decodes as an image within the pixel limit; Reject(reason) otherwise."""
  try:
    images.check(data, limits.max_pixels)
  except images.BadImage as bad:
    raise Reject(bad.reason, str(bad)) from None
  return data


def video_frames(data: bytes, limits: Limits) -> tuple[list[bytes], list[float], bool]:
  """A video file's or animated image's frames at 1 fps (JPEG), their times in seconds, and whether
  it went on past max_video_seconds (later seconds are left out; one more is decoded to tell)."""
  keep = limits.max_video_seconds
  try:
    frames, times = video.sample_1fps(data, max_pixels=limits.max_pixels, max_frames=keep + 1)
  except video.BadVideo as bad:
    raise Reject(bad.reason, str(bad)) from None
  return frames[:keep], times[:keep], len(frames) > keep
