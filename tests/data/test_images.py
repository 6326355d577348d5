"""images.decode / to_rgb on hand-made files: 16-bit greyscale, transparency onto white, CMYK JPEG,
EXIF orientation, other modes, and the per-call pixel limit (PIL's global limit left alone)."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import images

RED, BLUE = (255, 0, 0), (0, 0, 255)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  return buf.getvalue()


def rgb(data: bytes) -> np.ndarray:
  """Bytes -> [H, W, 3] uint8 through images.to_rgb (no crop, no resize)."""
  return np.asarray(images.to_rgb(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("value, expected", [(65535, 255), (32896, 128), (257, 1), (0, 0)])
def test_16bit_greyscale_png_is_scaled_not_clipped(value, expected):
  data = encode(Image.fromarray(np.full((6, 6), value, np.uint16)))
  assert Image.open(io.BytesIO(data)).mode == "I;16"
  assert (images.decode(data, 4) == expected).all()


def test_32bit_int_and_float_greyscale():
  assert (np.asarray(images.to_rgb(Image.fromarray(np.full((2, 2), 32896, np.int32)))) == 128).all()
  unit = Image.fromarray(np.full((2, 2), 0.5, np.float32))  # "F" in [0, 1]: scaled by 255.
  assert (np.asarray(images.to_rgb(unit)) == 128).all()
  bytes_range = Image.fromarray(np.array([[-3.0, 100.0], [300.0, np.nan]], np.float32))
  assert np.asarray(images.to_rgb(bytes_range))[..., 0].tolist() == [[0, 100], [255, 0]]


def test_palette_transparent_index_becomes_white():
  im = Image.new("P", (8, 8), 0)
  im.putpalette([0, 0, 0, 255, 0, 0])  # Index 0 black (transparent), 1 red.
  im.paste(1, (4, 0, 8, 8))
  pixels = rgb(encode(im, transparency=0))
  assert (pixels[:, :4] == 255).all() and (pixels[:, 4:] == RED).all()


def half_clear(mode: str, clear, half) -> Image.Image:
  """An 8 x 8 image: left half `clear` (alpha 0), right half `half` (black at alpha 128)."""
  im = Image.new(mode, (8, 8), clear)
  im.paste(half, (4, 0, 8, 8))
  return im


def palette_alpha() -> bytes:
  """A palette PNG with an alpha per entry (tRNS): index 0 clear, index 1 black at alpha 128."""
  im = half_clear("P", 0, 1)
  im.putpalette([0, 0, 0] * 2)
  return encode(im, transparency=bytes([0, 128]))


@pytest.mark.parametrize("data", [encode(half_clear("LA", (0, 0), (0, 128))),
                                  encode(half_clear("RGBA", (0, 0, 0, 0), (0, 0, 0, 128))),
                                  palette_alpha()], ids=["LA", "RGBA", "P+tRNS"])
def test_alpha_is_composited_onto_white(data):
  pixels = rgb(data).astype(int)
  assert (pixels[:, :4] == 255).all()
  np.testing.assert_allclose(pixels[:, 4:], 127, atol=1)  # Black at alpha 128/255 over white.


def test_palette_with_alpha_mode_onto_white():
  im = half_clear("PA", (0, 0), (1, 128))
  im.putpalette([0, 0, 0, 255, 0, 0])
  pixels = np.asarray(images.to_rgb(im)).astype(int)
  assert (pixels[:, :4] == 255).all()
  assert np.abs(pixels[:, 4:] - [255, 127, 127]).max() <= 1  # Red at alpha 128/255 over white.


def test_cmyk_jpeg_pure_cyan():
  data = encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
  assert Image.open(io.BytesIO(data)).mode == "CMYK" and b"Adobe" in data  # Adobe: inverted CMYK.
  pixels = images.decode(data, 8).reshape(-1, 3).astype(int)
  np.testing.assert_allclose(pixels, [[0, 255, 255]] * 64, atol=8)


def test_exif_orientation_6_rotates_clockwise():
  im = Image.new("RGB", (160, 80), BLUE)  # Stored landscape, marked red at the top left.
  im.paste(RED, (0, 0, 40, 40))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
  pixels = rgb(data).astype(int)
  assert pixels.shape == (160, 80, 3)  # Portrait; the top-left corner went to the top right.
  np.testing.assert_allclose(pixels[10, 70], RED, atol=12)
  np.testing.assert_allclose(pixels[10, 10], BLUE, atol=12)
  # decode: JPEG drafted at 1/4 scale (40 x 20) before the rotation, then the top square.
  top = images.decode(data, 20, images.Augmentation(crop_x=0.0, crop_y=0.0)).astype(int)
  np.testing.assert_allclose(top[3, 16], RED, atol=12)


@pytest.mark.parametrize("mode, colour, expected", [("1", 1, 255), ("L", 77, 77)])
def test_bilevel_and_grey_become_rgb(mode, colour, expected):
  assert (rgb(encode(Image.new(mode, (4, 4), colour))) == expected).all()


def test_max_pixels_is_per_call():
  data = encode(Image.new("RGB", (100, 100), RED))
  with pytest.raises(images.BadImage) as bad:
    images.decode(data, 8, max_pixels=5000)
  assert bad.value.reason == "enormous_image"
  assert (images.decode(data, 8) == RED).all()


def test_pil_own_limit_is_a_second_net(monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 > twice this: PIL refuses.
  with pytest.raises(images.BadImage) as bad:
    images.decode(encode(Image.new("RGB", (100, 100), RED)), 8, max_pixels=10**9)
  assert bad.value.reason == "enormous_image"


def test_import_leaves_pil_global_limit_alone():
  code = "import data_pipelines.images, PIL.Image; print(PIL.Image.MAX_IMAGE_PIXELS)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert int(out.stdout) == 89478485  # PIL's default, int(1024 * 1024 * 1024 // 4 // 3).


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("data, reason", [(b"", "empty_image"),
                                          (b"not an image" * 9, "corrupt_image"),
                                          (encode(NOISE)[:2000], "corrupt_image"),
                                          (encode(NOISE, "JPEG")[:2000], "corrupt_image")],
                         ids=["empty", "unknown", "truncated PNG", "truncated JPEG"])
def test_bad_bytes(data, reason):
  with pytest.raises(images.BadImage) as bad:
    images.decode(data, 8)
  assert bad.value.reason == reason
