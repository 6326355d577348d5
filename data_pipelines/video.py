"""Video and animated images -> frames sampled at 1 fps (the Flamingo paper samples video at 1 fps).

`sample_1fps` takes the bytes of an animated GIF / WebP / APNG (decoded with PIL) or of a video
container FFmpeg reads (MP4, WebM, MKV, MOV, AVI...; decoded with PyAV on one thread) and returns,
for each whole second t = 0, 1, 2..., the frame shown at t, JPEG-encoded, and the times
[0.0, 1.0, 2.0, ...]. Times count from the first frame. A frame is shown from its start until the
next frame starts (the last frame for its own duration; an animation frame without a duration for
NO_DURATION_MS). Media longer than max_frames seconds is cut to its first max_frames seconds, not
refused.

Bad input raises BadVideo, never anything else; its `reason` is a counter name:
  "enormous_video": a frame of more than max_pixels pixels (w * h; read from the header before
      decoding where the container gives it), or more than MAX_DECODE_RATE * max_frames frames of
      max_pixels to decode (e.g. thousands of frames of a few milliseconds).
  "corrupt_video": unreadable, truncated, or in no format PIL or FFmpeg knows.
  "no_frames": no video stream, a still image (fewer than 2 frames), or no frame on a whole second.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator

import av
import numpy as np
from PIL import Image, ImageSequence

from data_pipelines import images

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
ANIMATION_FORMATS = ("GIF", "WEBP", "PNG")  # PNG: APNG.
NO_DURATION_MS = 1000  # How long an animation frame without a duration is shown.
MAX_DECODE_RATE = 60  # Decoded frames (of max_pixels) per sampled second, on average, at most.

# (start, end, pixels): a frame is shown from start to end (seconds); pixels() -> [H, W, 3] uint8,
# callable only until the next frame is drawn (an animation decodes every frame into one image).
Shown = tuple[float, float, Callable[[], np.ndarray]]


class BadVideo(Exception):
  """A video or animation the converters skip; `reason` is its counter name (module docstring)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


def is_video_name(name: str) -> bool:
  """Whether a file name has a video container's extension (VIDEO_EXTENSIONS, any case)."""
  return name.lower().endswith(VIDEO_EXTENSIONS)


def is_animated(data: bytes) -> bool:
  """Whether data is a GIF, WebP or APNG of at least 2 frames (reads the header; never raises)."""
  try:
    with Image.open(io.BytesIO(data), formats=ANIMATION_FORMATS) as im:
      return bool(getattr(im, "is_animated", False))
  except Exception:  # Not one of those formats, or unreadable: not an animation.
    return False


def sample_1fps(data: bytes, *, max_pixels: int, max_frames: int,
                quality: int = 95) -> tuple[list[bytes], list[float]]:
  """Animation or video bytes -> (JPEGs at `quality`, times in seconds [0.0, 1.0, ...]): the frames
  shown at each whole second, at most max_frames of them. Raises BadVideo (module docstring)."""
  budget = MAX_DECODE_RATE * max_frames * max_pixels
  frames = _animation_frames if is_animated(data) else _video_frames
  try:
    with contextlib.closing(frames(data, max_pixels, budget)) as shown:
      jpegs, times = _each_second(shown, max_frames, quality)
  except BadVideo:
    raise
  except (images.BadImage, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadVideo("enormous_video", str(e)) from e
  except Exception as e:  # PIL and PyAV raise many types (OSError, ValueError, EOFError...).
    raise BadVideo("corrupt_video", repr(e)) from e
  if not jpegs:
    raise BadVideo("no_frames", "no frame is shown at a whole second")
  return jpegs, times


def _each_second(shown: Iterator[Shown], max_frames: int,
                 quality: int) -> tuple[list[bytes], list[float]]:
  """Frames in presentation order -> the JPEGs shown at t = 0, 1, ... < max_frames, and those t."""
  jpegs, times = [], []
  for start, end, pixels in shown:
    jpeg = None
    while start <= len(times) < min(end, max_frames):
      jpeg = jpeg or images.encode_jpeg(pixels(), quality)
      jpegs.append(jpeg)
      times.append(float(len(times)))
    if len(times) >= max_frames:
      break
  return jpegs, times


def _animation_frames(data: bytes, max_pixels: int, budget: int) -> Iterator[Shown]:
  """The frames of an animated GIF / WebP / APNG, each shown for its duration."""
  start, im = 0.0, Image.open(io.BytesIO(data), formats=ANIMATION_FORMATS)
  for n, frame in enumerate(ImageSequence.Iterator(im), 1):
    images.check_pixels(frame.size, max_pixels)  # Seeking read its header (GIF frames can grow).
    images.check_pixels(frame.size, budget, frames=n)
    frame.load()  # Decodes; sets info["duration"] (WebP); raises on corrupt data.
    duration = frame.info.get("duration")
    end = start + (NO_DURATION_MS if duration is None else duration) / 1000
    # to_rgb transposes in place and drops the EXIF orientation: give it a copy, for the next frame.
    yield start, end, lambda f=frame: np.asarray(images.to_rgb(f.copy()))
    start = end


def _video_frames(data: bytes, max_pixels: int, budget: int) -> Iterator[Shown]:
  """The frames of the first video stream of a container, each shown until the next starts."""
  with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
    if not container.streams.video:
      raise BadVideo("no_frames", f"no video stream in {container.format.name}")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    images.check_pixels((stream.codec_context.width, stream.codec_context.height), max_pixels)
    first = last = None
    for n, frame in enumerate(container.decode(stream), 1):
      images.check_pixels((frame.width, frame.height), max_pixels)
      images.check_pixels((frame.width, frame.height), budget, frames=n)
      if frame.pts is None:
        raise BadVideo("corrupt_video", f"frame {n} has no timestamp")
      first = frame.pts if first is None else first
      start = float((frame.pts - first) * stream.time_base)
      if last is not None:
        yield last[0], start, last[1]
      last = start, lambda f=frame: f.to_ndarray(format="rgb24")
      end = start + float((frame.duration or 0) * stream.time_base)
    if last is None or n < 2:
      raise BadVideo("no_frames", "a still image" if last else "no frames decoded")
    yield last[0], end, last[1]
