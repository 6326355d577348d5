"""The crafted inputs of the converter tests: media files, good documents and the bad-input kinds.

A `Kind` is one crafted input with the counters it must give. The row kinds (`row_kinds`) are
shared: test_jsonl.py writes each as a line, test_wds.py as a KEY.json member, test_parquet.py as a
table row where Parquet's types can hold it. Media names in rows resolve under `Media.root`
(--image_root); `Media.secret` is a valid JPEG outside it, which no record may ever contain.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import io
import json
import os
import zlib
from pathlib import Path

import numpy as np
import zstandard
from PIL import Image

from data_pipelines.convert import media
from tests.data.builders import COLOURS, encoded_video, jpeg

BOM = b"\xef\xbb\xbf"
MAX_FILE_BYTES = 64 << 10


def limits(root: Path | None) -> media.Limits:
  """Small caps, so that each can be crossed by a small input (good inputs stay under them)."""
  return media.Limits(image_root=None if root is None else str(root), max_pixels=10_000,
                      max_video_seconds=4, max_text_bytes=1000, max_images=3,
                      max_file_bytes=MAX_FILE_BYTES)


# ---------------------------------------------------------------------------------------- media


def gif(frames: int, screen: tuple[int, int] | None = None, duration_ms: int = 500) -> bytes:
  """A GIF of `frames` 16x16 frames, COLOURS[second] during each second; `screen` patches its
  logical screen size (a canvas bomb: 100 bytes that claim billions of pixels)."""
  size = (1, 1) if screen else (16, 16)
  images = [Image.new("RGB", size, COLOURS[i * duration_ms // 1000 % len(COLOURS)])
            for i in range(frames)]
  buf = io.BytesIO()
  images[0].save(buf, format="GIF", save_all=frames > 1, append_images=images[1:],
                 duration=duration_ms, loop=0)
  data = bytearray(buf.getvalue())
  if screen:
    data[6:10] = screen[0].to_bytes(2, "little") + screen[1].to_bytes(2, "little")
  return bytes(data)


@functools.cache
def mp4(seconds: float = 3.5, fps: int = 10, size: int = 32) -> bytes:
  """An MPEG-4 video of size x size frames, COLOURS[second] during each second."""
  return encoded_video("mp4", "mpeg4", seconds, fps, size)


OK, OK2 = jpeg(1), jpeg(2)
SECRET = jpeg(99, size=(30, 20))  # Outside every root: its bytes must never reach a record.
PASSWD = open("/etc/passwd", "rb").read() if os.path.isfile("/etc/passwd") else b"\0no passwd"
CORRUPT = b"this is not an image " * 20
PAGE = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>"
TRUNCATED_JPEG = jpeg(5)[:len(jpeg(5)) // 2]
GIF_BOMB = gif(1, screen=(65535, 65535))  # 4.3e9 pixels claimed by ~70 bytes.
ANIMATED_BOMB = gif(2, screen=(9000, 9000), duration_ms=1000)  # 8.1e7 pixels a frame.
HUGE_JPEG = jpeg(3, size=(200, 200))  # 40,000 pixels: over max_pixels (10,000).
BIG_JPEG = jpeg(4) + bytes(MAX_FILE_BYTES)  # A valid JPEG over max_file_bytes.
ANIMATION = gif(8)  # 8 frames of 0.5 s: frames at 0, 1, 2, 3 s.
LONG_ANIMATION = gif(12)  # 6 s: cut at max_video_seconds (4).
HUGE_MP4_SIZE = 128  # 16,384 pixels a frame: over max_pixels.

FIFO, DIR = "fifo", "dir"  # File specs besides bytes and Link.


@dataclasses.dataclass(frozen=True)
class Link:
  """A symbolic link to `target`."""
  target: str


def root_files(outside: Path) -> dict[str, object]:
  return {"ok.jpg": OK, "ok2.jpg": OK2, "corrupt.jpg": CORRUPT, "page.jpg": PAGE,
          "empty.jpg": b"", "truncated.jpg": TRUNCATED_JPEG, "bomb.gif": GIF_BOMB,
          "huge.jpg": HUGE_JPEG, "big.jpg": BIG_JPEG, "clip.mp4": mp4(),
          "anim.gif": ANIMATION, "long.gif": LONG_ANIMATION, "corrupt.mp4": CORRUPT,
          "still.mp4": OK, "huge.mp4": mp4(1, 2, HUGE_MP4_SIZE), "bomb-anim.gif": ANIMATED_BOMB,
          "sub/ok.jpg": OK, "dir.jpg": DIR, "fifo.jpg": FIFO,
          "dangling.jpg": Link("nowhere.jpg"), "escape.jpg": Link(str(outside / "secret.jpg"))}


def make_files(folder: Path, files: dict[str, object]) -> None:
  """Creates `files` (relative name -> bytes | Link | FIFO | DIR) under `folder`."""
  for name, value in files.items():
    path = folder / os.fsdecode(name) if isinstance(name, bytes) else folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, bytes):
      path.write_bytes(value)
    elif isinstance(value, Link):
      os.symlink(value.target, path)
    elif value == FIFO:
      os.mkfifo(path)
    else:
      path.mkdir()


@dataclasses.dataclass(frozen=True)
class Media:
  root: Path  # --image_root.
  secret: Path  # A valid JPEG (SECRET) beside the root, outside it.


def make_media(tmp: Path) -> Media:
  """tmp/media (the image root, root_files) and tmp/secret.jpg, tmp/secret.txt outside it."""
  (tmp / "secret.jpg").write_bytes(SECRET)
  (tmp / "secret.txt").write_bytes(b"a secret caption")
  make_files(tmp / "media", root_files(tmp))
  return Media(tmp / "media", tmp / "secret.jpg")


def all_parts(records) -> bytes:
  """Every part of every record, joined (to look for bytes that must not be there)."""
  return b"".join(p.data for r in records for p in r.parts)


# ------------------------------------------------------------------------------------ documents


def b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def good_rows(n: int, prefix: str = "good") -> list[dict]:
  """n good documents, url f"{prefix}-{i}", cycling through OBELICS (names), MMC4 (names), MMC4
  (base64), pair, video (MP4) and video (animated GIF)."""
  layouts = [
      lambda: {"texts": ["an intro", None, "an outro"], "images": [None, "ok.jpg", None]},
      lambda: {"text_list": ["first", "second"],
               "image_info": [{"image_name": "ok2.jpg", "matched_text_index": 1},
                              {"image_name": "ok.jpg", "matched_text_index": 0}]},
      lambda: {"text_list": ["only"], "image_info": [{"image_base64": b64(OK),
                                                       "matched_text_index": 0}]},
      lambda: {"image": "ok.jpg", "caption": "a photo"},
      lambda: {"video": "clip.mp4", "caption": "colours, one a second"},
      lambda: {"video": "anim.gif", "caption": "an animation"},
  ]
  return [{"url": f"{prefix}-{i}"} | layouts[i % len(layouts)]() for i in range(n)]


def record_kind(row) -> str:
  """The record kind a row of a rows.py layout becomes."""
  if "video" in row:
    return "video"
  return "pairs" if "image" in row else "interleaved"


# ---------------------------------------------------------------------------------------- kinds


@dataclasses.dataclass(frozen=True)
class Kind:
  """A crafted input and what it must give. `row` is a JSON value (dicts get url "kind:NAME" unless
  they have one) or, for a line-level kind, raw bytes. `expect` holds (counter, part) pairs:
  "skipped/<reason>" (nothing written), "dropped/<reason>" with the dropped part's label, or
  "cut/<cap>". A kind without a "skipped" counter is written once, with source `source` (None: its
  location, since its url is not usable)."""
  name: str
  row: object
  expect: tuple[tuple[str, str], ...] = ()
  kind: str = ""  # The record kind, when written.
  source: str | None = ""

  def __post_init__(self):
    if isinstance(self.row, dict) and "url" not in self.row:
      object.__setattr__(self, "row", {"url": f"kind:{self.name}"} | self.row)
    if self.source == "":
      object.__setattr__(self, "source", f"kind:{self.name}")
    if not self.kind and self.written:
      row = self.row if isinstance(self.row, dict) else json.loads(self.row.removeprefix(BOM))
      object.__setattr__(self, "kind", record_kind(row))

  @property
  def written(self) -> bool:
    return not any(counter.startswith("skipped/") for counter, _ in self.expect)

  @property
  def bad(self) -> bool:
    return bool(self.expect)

  def line(self) -> bytes:
    """The kind as one JSONL line (no newline) or .json member."""
    return self.row if isinstance(self.row, bytes) else json.dumps(self.row).encode()


def skip(reason: str) -> tuple:
  return (("skipped/" + reason, ""),)


def drop(reason: str, part: str) -> tuple:
  return (("dropped/" + reason, part),)


def cut(cap: str) -> tuple:
  return (("cut/" + cap, ""),)


def raw(row: dict) -> bytes:
  return json.dumps(row).encode()


def line_kinds() -> list[Kind]:
  """Kinds that only a line of text (JSONL, a .json member) can hold."""
  pair = {"url": "kind:x", "image": "ok.jpg", "caption": "a photo"}
  return [
      Kind("bad_json", b'{"texts": ["a", ', skip("bad_json")),
      Kind("cut_mid_row", raw(pair)[:30], skip("bad_json")),
      Kind("trailing_garbage", raw(pair) + b" and more", skip("bad_json")),
      Kind("two_objects", raw(pair) + raw(pair), skip("bad_json")),
      Kind("single_quotes", b"{'image': 'ok.jpg', 'caption': 'a'}", skip("bad_json")),
      Kind("raw_tab_in_string", b'{"image": "ok.jpg", "caption": "a\tb"}', skip("bad_json")),
      Kind("deep_nesting", b"[" * 20_000 + b"]" * 20_000, skip("bad_json")),
      Kind("nul_bytes", b"\0" * 32, skip("bad_json")),
      Kind("utf16_row", json.dumps(pair).encode("utf-16-le"), skip("bad_json")),
      Kind("latin1_row", '{"image": "ok.jpg", "caption": "café"}'.encode("latin-1"),
           skip("invalid_utf8")),
      Kind("overlong_utf8", b'{"image": "ok.jpg", "caption": "\xc0\xaf"}', skip("invalid_utf8")),
      Kind("bom_row", BOM + raw({"url": "kind:bom_row", "image": "ok.jpg", "caption": "a"})),
      Kind("crlf_row", raw({"url": "kind:crlf_row", "image": "ok.jpg", "caption": "a"}) + b"\r"),
  ]


def value_kinds(secret: Path) -> list[Kind]:
  """Kinds that are JSON values: rows of every layout with every type and content problem."""
  ok = "ok.jpg"

  def with_image(name: str, value) -> Kind:
    """An OBELICS document with a good image and `value` at images[3]: kept, that image dropped."""
    return Kind(name, {"texts": ["intro", None, "middle", None], "images": [None, ok, None, value]},
                drop(MEDIA_REASONS[name], "images[3]"))

  def mmc4(name: str, info: dict, expect=()) -> Kind:
    """An MMC4 document with a good image at index 0 and `info` as image_info[1]."""
    return Kind(name, {"text_list": ["one", "two"],
                       "image_info": [{"image_name": ok, "matched_text_index": 0}, info]}, expect)

  def index(name: str, value) -> Kind:
    return mmc4(name, {"image_name": ok, "matched_text_index": value},
                skip("bad_matched_text_index"))

  return [
      # Not an object, or no layout.
      Kind("null_row", None, skip("not_an_object")),
      Kind("list_row", [{"image": ok, "caption": "a"}], skip("not_an_object")),
      Kind("string_row", "a caption", skip("not_an_object")),
      Kind("number_row", 42, skip("not_an_object")),
      Kind("bool_row", True, skip("not_an_object")),
      Kind("only_url", {}, skip("unknown_layout")),
      Kind("unknown_keys", {"body": "text", "img": ok}, skip("unknown_layout")),
      Kind("caption_only", {"caption": "a"}, skip("unknown_layout")),
      Kind("image_only", {"image": ok}, skip("unknown_layout")),
      # OBELICS: types and structure.
      Kind("texts_null", {"texts": None, "images": [ok]}, skip("wrong_type")),
      Kind("texts_string", {"texts": "hello", "images": [None]}, skip("wrong_type")),
      Kind("texts_object", {"texts": {"0": "a"}, "images": [ok]}, skip("wrong_type")),
      Kind("images_null", {"texts": ["a"], "images": None}, skip("wrong_type")),
      Kind("images_missing", {"texts": ["a", None]}, skip("wrong_type")),
      Kind("images_string", {"texts": ["a"], "images": ok}, skip("wrong_type")),
      Kind("unequal_lists", {"texts": ["a", None, "b"], "images": [None, ok]},
           skip("length_mismatch")),
      Kind("text_and_image", {"texts": ["a", "b"], "images": [None, ok]}, skip("bad_position")),
      Kind("neither", {"texts": ["a", None, None], "images": [None, ok, None]},
           skip("bad_position")),
      Kind("integer_text", {"texts": [5, None], "images": [None, ok]}, skip("wrong_type")),
      Kind("float_text", {"texts": [1.5, None], "images": [None, ok]}, skip("wrong_type")),
      Kind("bool_text", {"texts": [True, None], "images": [None, ok]}, skip("wrong_type")),
      Kind("object_text", {"texts": [{"t": "a"}, None], "images": [None, ok]}, skip("wrong_type")),
      Kind("list_text", {"texts": [["a"], None], "images": [None, ok]}, skip("wrong_type")),
      Kind("lone_surrogate", {"texts": ["\ud800 x", None], "images": [None, ok]},
           skip("invalid_text")),
      Kind("empty_lists", {"texts": [], "images": []}, skip("no_text")),
      Kind("blank_texts", {"texts": [" \n\t", None], "images": [None, ok]}, skip("no_text")),
      Kind("text_only", {"texts": ["a"], "images": [None]}, skip("no_images")),
      Kind("no_image_left", {"texts": ["a", None], "images": [None, "missing.jpg"]},
           drop("missing_media", "images[1]") + skip("no_images")),
      # OBELICS: an image that cannot be read is dropped; the rest of the document is kept.
      with_image("parent_dir_name", "../secret.jpg"),
      with_image("absolute_name", str(secret)),
      with_image("etc_passwd", "/etc/passwd"),
      with_image("dotdot_inside_name", "sub/../../secret.jpg"),
      with_image("symlink_out", "escape.jpg"),
      with_image("dangling_symlink", "dangling.jpg"),
      with_image("missing_file", "missing.jpg"),
      with_image("directory", "dir.jpg"),
      with_image("fifo", "fifo.jpg"),
      with_image("empty_name", ""),
      with_image("nul_in_name", "ok.jpg\0.txt"),
      with_image("number_image", 7),
      with_image("list_image", [ok]),
      with_image("object_without_bytes", {"path": ok}),
      with_image("corrupt_image", "corrupt.jpg"),
      with_image("html_as_image", "page.jpg"),
      with_image("empty_image", "empty.jpg"),
      with_image("truncated_jpeg", "truncated.jpg"),
      with_image("gif_bomb", "bomb.gif"),
      with_image("over_max_pixels", "huge.jpg"),
      with_image("over_max_file_bytes", "big.jpg"),
      # MMC4.
      Kind("text_list_string", {"text_list": "one two", "image_info": []}, skip("wrong_type")),
      Kind("text_list_null", {"text_list": None, "image_info": []}, skip("wrong_type")),
      Kind("text_list_number", {"text_list": ["a", 3], "image_info": []}, skip("wrong_type")),
      Kind("image_info_object", {"text_list": ["a"], "image_info": {"image_name": ok,
                                                                    "matched_text_index": 0}},
           skip("wrong_type")),
      mmc4("image_info_string", ok, skip("wrong_type")),
      index("index_out_of_range", 2),
      index("index_negative", -1),
      index("index_string", "0"),
      index("index_bool", True),
      index("index_float", 0.0),
      index("index_null", None),
      mmc4("no_image_field", {"matched_text_index": 1}, skip("no_image_field")),
      mmc4("bad_base64", {"image_base64": "%%% not base64", "matched_text_index": 1},
           drop("bad_base64", "image_info[1]")),
      mmc4("base64_number", {"image_base64": 12, "matched_text_index": 1},
           drop("wrong_type", "image_info[1]")),
      mmc4("base64_of_html", {"image_base64": b64(PAGE), "matched_text_index": 1},
           drop("corrupt_image", "image_info[1]")),
      mmc4("mmc4_name_outside", {"image_name": "../secret.jpg", "matched_text_index": 1},
           drop("path_outside_root", "image_info[1]")),
      Kind("image_info_null", {"text_list": ["a"], "image_info": None}, skip("no_images")),
      # Pairs.
      Kind("caption_number", {"image": ok, "caption": 5}, skip("wrong_type")),
      Kind("caption_null", {"image": ok, "caption": None}, skip("wrong_type")),
      Kind("caption_list", {"image": ok, "caption": ["a", "b"]}, skip("wrong_type")),
      Kind("caption_empty", {"image": ok, "caption": ""}, skip("no_text")),
      Kind("caption_blank", {"image": ok, "caption": " \n "}, skip("no_text")),
      Kind("pair_image_null", {"image": None, "caption": "a"}, skip("wrong_type")),
      Kind("pair_image_missing", {"image": "missing.jpg", "caption": "a"}, skip("missing_media")),
      Kind("pair_image_corrupt", {"image": "corrupt.jpg", "caption": "a"}, skip("corrupt_image")),
      Kind("pair_image_outside", {"image": "../secret.jpg", "caption": "a"},
           skip("path_outside_root")),
      # Videos.
      Kind("video_corrupt", {"video": "corrupt.mp4", "caption": "a"}, skip("corrupt_video")),
      Kind("video_still", {"video": "still.mp4", "caption": "a"}, skip("no_frames")),
      Kind("video_number", {"video": 3, "caption": "a"}, skip("wrong_type")),
      Kind("video_outside", {"video": "../secret.jpg", "caption": "a"},
           skip("path_outside_root")),
      Kind("video_over_max_pixels", {"video": "huge.mp4", "caption": "a"},
           skip("enormous_video")),
      Kind("animated_bomb", {"video": "bomb-anim.gif", "caption": "a"}, skip("enormous_video")),
      # Per-document caps: kept, cut (counted).
      Kind("text_over_cap", {"texts": [None, "é" * 600], "images": [ok, None]},
           cut("max_text_bytes")),
      Kind("images_over_cap", {"texts": ["a"] + [None] * 5, "images": [None] + [ok] * 5},
           cut("max_images")),
      Kind("caption_over_cap", {"image": ok, "caption": "x" * 1500}, cut("max_text_bytes")),
      Kind("video_over_cap", {"video": "long.gif", "caption": "a"}, cut("max_video_seconds")),
      # Good, though unusual: written, nothing counted.
      Kind("url_not_string", {"url": 5, "image": ok, "caption": "a"}, source=None),
      Kind("unicode_text", {"texts": ["日本語 עברית 🙂", None], "images": [None, ok]}),
      Kind("extra_keys", {"image": ok, "caption": "a", "score": 0.5, "meta": {"w": 1}}),
      Kind("nan_field", {"image": ok, "caption": "a", "score": float("nan")}),
      Kind("dot_segments_inside", {"image": "sub/../ok.jpg", "caption": "a"}),
  ]


MEDIA_REASONS = {
    "parent_dir_name": "path_outside_root", "absolute_name": "path_outside_root",
    "etc_passwd": "path_outside_root", "dotdot_inside_name": "path_outside_root",
    "symlink_out": "path_outside_root", "dangling_symlink": "missing_media",
    "missing_file": "missing_media", "directory": "not_a_file", "fifo": "not_a_file",
    "empty_name": "bad_media_name", "nul_in_name": "bad_media_name", "number_image": "wrong_type",
    "list_image": "wrong_type", "object_without_bytes": "wrong_type",
    "corrupt_image": "corrupt_image", "html_as_image": "corrupt_image",
    "empty_image": "empty_image", "truncated_jpeg": "corrupt_image", "gif_bomb": "enormous_image",
    "over_max_pixels": "enormous_image", "over_max_file_bytes": "file_too_large"}


def row_kinds(secret: Path) -> list[Kind]:
  """Every shared kind: line-level ones, then JSON values."""
  kinds = line_kinds() + value_kinds(secret)
  assert len({k.name for k in kinds}) == len(kinds)
  return kinds


def interleave(goods: list, bads: list) -> list:
  """The goods with the bads spread evenly between them (a good one first and last)."""
  gaps = np.array_split(np.arange(len(bads)), max(1, len(goods) - 1))
  out = []
  for i, good in enumerate(goods):
    out.append(good)
    out += [bads[j] for j in gaps[i]] if i < len(gaps) else []
  return out


# ------------------------------------------------------------------------------------ compressed


def gzipped(data: bytes) -> bytes:
  return gzip.compress(data, mtime=0)


def zstd_blocks(data: bytes, block: int = 256) -> bytes:
  """One zstd frame of `data`, flushed every `block` bytes (so that a truncated copy still holds
  whole blocks to decompress)."""
  compressor = zstandard.ZstdCompressor().compressobj()
  out = b"".join(compressor.compress(data[i:i + block]) +
                 compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                 for i in range(0, len(data), block))
  return out + compressor.flush()


def readable_prefix(truncated: bytes) -> bytes:
  """What a gzip or zstd stream cut short still decompresses to (b"" if cut in its header)."""
  try:
    if truncated.startswith(b"\x1f\x8b"):
      return zlib.decompressobj(wbits=31).decompress(truncated)
    return zstandard.ZstdDecompressor().decompressobj().decompress(truncated)
  except (zlib.error, zstandard.ZstdError):
    return b""
