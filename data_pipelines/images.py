"""Image decoding and augmentation: encoded bytes -> [H, W, 3] uint8 at the config resolution.

Images leave the pipeline as uint8; the model normalises them on the device with
`model.vision.pixel_mean / pixel_std` (flamingo_jax/models/vision.py), so no float images cross the host.

Geometry: the largest centred (eval) or randomly placed (training) square crop, resized to
size x size with bilinear filtering (`PIL.Image.resize(box=...)`, one pass; JPEGs are decoded at the
smallest DCT scale that still covers size x size). Training adds a random horizontal flip (p = 0.5) and
colour jitter (brightness, contrast, saturation, each a factor in [1 - JITTER, 1 + JITTER]). The
frames of one video share one draw.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

JITTER = 0.2
DEFAULT_MAX_PIXELS = 64_000_000  # Larger images (w * h) are refused before decoding (bombs).

# We refuse large images ourselves (BadImage "enormous_image"), before PIL's own, later check.
Image.MAX_IMAGE_PIXELS = None


class BadImage(Exception):
  """An image the pipeline skips; `reason` is its counter name."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One draw of the geometric and colour augmentation (identity for evaluation)."""
  crop_x: float = 0.5  # Position of the square crop along the free axis, in [0, 1].
  crop_y: float = 0.5
  flip: bool = False
  brightness: float = 1.0
  contrast: float = 1.0
  saturation: float = 1.0

  @classmethod
  def draw(cls, rng: np.random.Generator, random_flip: bool = True) -> "Augmentation":
    """A training draw; random_flip=False never flips (for captions that say "left" / "right")."""
    crop_x, crop_y, flip = rng.random(), rng.random(), bool(rng.random() < 0.5)
    b, c, s = rng.uniform(1 - JITTER, 1 + JITTER, 3)
    return cls(crop_x, crop_y, flip and random_flip, float(b), float(c), float(s))


def decode(data: bytes, size: int, aug: Augmentation = Augmentation(),
           max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Encoded JPEG / PNG / ... bytes -> [size, size, 3] uint8. Raises BadImage with reason
  "empty_image", "enormous_image" (more than max_pixels, checked from the header before decoding) or
  "corrupt_image" (unreadable or truncated)."""
  if not data:
    raise BadImage("empty_image")
  try:
    im = Image.open(io.BytesIO(data))  # Reads the header only.
    w, h = im.size
    if w * h > max_pixels:
      raise BadImage("enormous_image", f"{w}x{h} > {max_pixels} pixels")
    im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size.
    im = im.convert("RGB")  # Decodes; raises on truncated or corrupt data.
  except BadImage:
    raise
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) on bad data.
    raise BadImage("corrupt_image", repr(e)) from e
  w, h = im.size
  side = min(w, h)
  x0, y0 = round(aug.crop_x * (w - side)), round(aug.crop_y * (h - side))
  im = im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
  if aug.flip:
    im = im.transpose(Image.FLIP_LEFT_RIGHT)
  if (aug.brightness, aug.contrast, aug.saturation) != (1.0, 1.0, 1.0):
    im = colour_jitter(im, aug)
  return np.asarray(im)


def colour_jitter(im: Image.Image, aug: Augmentation) -> Image.Image:
  """Brightness (scale), then contrast (around the image's mean grey), as one lookup table; then
  saturation (blend with the pixel's grey, as PIL.ImageEnhance.Color). uint8 in, uint8 out."""
  mean = float(np.asarray(im.convert("L")).mean()) * aug.brightness
  lut = np.clip((np.arange(256) * aug.brightness - mean) * aug.contrast + mean + 0.5, 0, 255)
  im = im.point(lut.astype(np.uint8).tolist() * 3)
  return Image.blend(im.convert("L").convert("RGB"), im, aug.saturation)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
  """[H, W, 3] uint8 -> JPEG bytes (converters and the demo corpus)."""
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()

