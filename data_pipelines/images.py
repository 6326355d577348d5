"""Image decoding and augmentation: encoded bytes -> [H, W, 3] uint8 at the config resolution.

Images leave the pipeline as uint8; the model normalises them on the device with
`model.vision.pixel_mean / pixel_std` (flamingo_jax/models/vision.py), so no float images cross the host.

Geometry: the largest centred (eval) or randomly placed (training) square crop, resized to
size x size with bilinear filtering (`PIL.Image.resize(box=...)`, one pass; JPEGs are decoded at the
smallest DCT scale that still covers size x size). Training adds a random horizontal flip (p = 0.5) and
colour jitter (brightness, contrast, saturation, each a factor in [1 - JITTER, 1 + JITTER]). The
frames of one video share one draw.

Colour (`to_rgb`): EXIF orientation is applied; 16-bit greyscale is scaled to 8 bits (v / 257);
transparent pixels are composited onto white; CMYK (Adobe-inverted too), YCbCr, LAB, "1" and "L"
become RGB.

Decompression bombs: `decode(max_pixels=...)` refuses images over a per-call w * h limit, read from
the header before decoding. PIL's own process-wide limit (`Image.MAX_IMAGE_PIXELS`, by default
89,478,485 pixels: a DecompressionBombWarning above it, a DecompressionBombError above twice it) is
left in place as a second net; either, when raised, is reported as BadImage "enormous_image".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

JITTER = 0.2
DEFAULT_MAX_PIXELS = 64_000_000  # Larger images (w * h) are refused before decoding (bombs).
WHITE = (255, 255, 255)


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
  "empty_image", "enormous_image" (more than max_pixels, checked from the header before decoding, or
  over PIL's own limit) or "corrupt_image" (unreadable or truncated)."""
  with _bad_image_reasons():
    im = _open(data, max_pixels)
    im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size.
    im = to_rgb(im)  # Decodes; raises on truncated or corrupt data.
  w, h = im.size
  side = min(w, h)
  x0, y0 = round(aug.crop_x * (w - side)), round(aug.crop_y * (h - side))
  im = im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
  if aug.flip:
    im = im.transpose(Image.FLIP_LEFT_RIGHT)
  if (aug.brightness, aug.contrast, aug.saturation) != (1.0, 1.0, 1.0):
    im = colour_jitter(im, aug)
  return np.asarray(im)


def check(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
  """Raises BadImage as `decode` would, without resizing (the converters' check): every byte is
  decoded, JPEGs at their smallest DCT scale, which still reads the whole stream."""
  with _bad_image_reasons():
    im = _open(data, max_pixels)
    im.draft(im.mode, (1, 1))
    im.load()


def _open(data: bytes, max_pixels: int) -> Image.Image:
  """The lazily opened image (header read), checked against max_pixels."""
  if not data:
    raise BadImage("empty_image")
  im = Image.open(io.BytesIO(data))
  check_pixels(im.size, max_pixels)
  return im


@contextlib.contextmanager
def _bad_image_reasons():
  """Turns PIL's errors on bad data into BadImage with its reason."""
  try:
    yield
  except BadImage:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadImage("enormous_image", str(e)) from e
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) on bad data.
    raise BadImage("corrupt_image", repr(e)) from e


def check_pixels(size: tuple[int, int], max_pixels: int, frames: int = 1) -> None:
  """Raises BadImage("enormous_image") if frames images of size (w, h) hold more than max_pixels
  pixels in all; call it before decoding (animations: frames decoded so far)."""
  w, h = size
  if frames * w * h > max_pixels:
    raise BadImage("enormous_image", f"{frames} x {w}x{h} > {max_pixels} pixels; raise max_pixels "
                   "to accept it")


def to_rgb(im: Image.Image) -> Image.Image:
  """A PIL image of any mode -> RGB, EXIF orientation applied. Decodes a lazily opened image and
  transposes im itself in place.

  16-bit ("I;16*", "I") greyscale -> 8 bits as v / 257 (clipped to [0, 255]); "F" as v * 255 when
  all values are in [0, 1], else v (clipped); transparency (alpha or a "transparency" colour or
  palette index) composited onto white; every other mode by PIL's `convert("RGB")`."""
  ImageOps.exif_transpose(im, in_place=True)
  if im.mode.startswith("I") or im.mode == "F":
    im = _to_8bit_grey(im)
  if im.has_transparency_data:
    rgba = im.convert("RGBA")
    im = Image.new("RGB", im.size, WHITE)
    im.paste(rgba, mask=rgba.getchannel("A"))
  return im.convert("RGB")


def _to_8bit_grey(im: Image.Image) -> Image.Image:
  """An "I;16*", "I" or "F" greyscale image -> "L" (see to_rgb)."""
  values = np.nan_to_num(np.asarray(im, dtype=np.float32))
  if im.mode == "F":
    values = values * 255 if values.size and 0 <= values.min() and values.max() <= 1 else values
  else:
    values = values / 257
  return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


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

