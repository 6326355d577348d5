"""Splitting an input into units, once per input file (sources.py converts them).

A unit is `(where, payload, error)`: where it comes from ("file:line", "file.tar:key", "folder/entry",
"name/split:index"), what to convert, and a reader-side (reason, detail) when the unit could not be
read at all (a truncated stream, an unreadable row group). Splitting never raises on bad data: a
break becomes a unit with its error, after every unit before it.

* jsonl: a unit per non-blank line; gzip or zstd by their magic bytes (concatenated frames too).
* parquet: a unit per table row, read row group by row group.
* wds: a unit per sample of a WebDataset tar (optionally gzip / zstd): its members grouped by key
  (the name up to its first dot), {extension: bytes}; a member over max_file_bytes is not read.
* folder: a unit per media file (with its NAME.txt caption, if any) or frame sub-folder. File names
  need not be UTF-8: a folder unit carries them as bytes.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from typing import Iterator

from data_pipelines import video
from data_pipelines.convert import media
from data_pipelines.convert.outcome import Reject, printable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
Unit = tuple[str, object, "tuple[str, str] | None"]


class Truncated(Exception):
  """A compressed input that ends inside a frame."""


def _decompressor(magic: bytes):
  if magic.startswith(GZIP_MAGIC):
    return zlib.decompressobj(wbits=31)
  if magic.startswith(ZSTD_MAGIC):
    import zstandard  # A dependency of apache-beam.
    return zstandard.ZstdDecompressor().decompressobj()
  return None


def read_chunks(path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
  """The bytes of `path`, gunzipped or un-zstd'ed when its magic says so (concatenated frames too);
  Truncated if a compressed stream breaks or ends early, after every byte before the break."""
  with open(path, "rb") as f:
    data = f.read(chunk_bytes)
    stream = _decompressor(data)
    if stream is None:
      while data:
        yield data
        data = f.read(chunk_bytes)
      return
    while True:
      try:
        yield stream.decompress(data)
      except Exception as e:  # zlib.error, zstandard.ZstdError: the bytes are not a valid frame.
        raise Truncated(f"corrupt compressed data: {e}") from None
      if not stream.eof:
        if not (data := f.read(chunk_bytes)):
          raise Truncated("the compressed stream ends inside a frame")
        continue
      data = stream.unused_data
      if len(data) < len(ZSTD_MAGIC):
        data += f.read(chunk_bytes)
      if not data:
        return
      if (stream := _decompressor(data)) is None:
        raise Truncated("bytes after the last compressed frame are not a frame")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  pending, number = b"", 0
  for chunk in read_chunks(path):
    pending += chunk
    *complete, pending = pending.split(b"\n")
    for line in complete:
      number += 1
      yield number, line
  if pending:
    yield number + 1, pending


class _ChunkFile:
  """A read-only file object over `read_chunks` (for tarfile's stream mode)."""

  def __init__(self, path: str):
    self._chunks, self._buffer = read_chunks(path), b""

  def read(self, size: int = -1) -> bytes:
    while size < 0 or len(self._buffer) < size:
      chunk = next(self._chunks, None)
      if chunk is None:
        break
      self._buffer += chunk
    size = len(self._buffer) if size < 0 else size
    out, self._buffer = self._buffer[:size], self._buffer[size:]
    return out


def is_media(name: str) -> bool:
  ext = "." + name.rsplit(".", 1)[-1].lower()
  return ext in IMAGE_EXTENSIONS or video.is_video_name(name)


def jsonl_units(path: str) -> Iterator[Unit]:
  number = 0
  try:
    for number, line in _lines(path):
      if number == 1:
        line = line.removeprefix(BOM)
      if line.strip():
        yield f"{path}:{number}", line, None
  except (OSError, Truncated) as e:
    yield f"{path}:{number + 1}", None, ("truncated_file", str(e))


def parquet_units(path: str) -> Iterator[Unit]:
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    table = pq.ParquetFile(path)
  except (pa.ArrowException, OSError, ValueError) as e:
    yield path, None, ("unreadable_file", f"not a Parquet file: {e}")
    return
  first = 0
  for group in range(table.num_row_groups):
    size = table.metadata.row_group(group).num_rows
    try:
      batch = table.read_row_group(group).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
      yield f"{path}:row group {group}", None, (
          "unreadable_row_group", f"rows {first}-{first + size - 1}: {e}")
    else:
      for i, row in enumerate(batch):
        yield f"{path}:row {first + i}", row, None
    first += size


def tar_units(path: str, max_bytes: int) -> Iterator[Unit]:
  """A tar's samples; a sample with a member over max_bytes is skipped (not read). Member names
  need not be UTF-8: where and the sample's extensions are made printable."""
  key, sample, error = None, {}, None
  try:
    with tarfile.open(fileobj=_ChunkFile(path), mode="r|") as tar:
      for member in tar:
        if not member.isfile():
          if not member.isdir():
            yield printable(f"{path}:{member.name}"), None, (
                "not_a_file", f"tar member of type {member.type!r}")
          continue
        stem, _, ext = os.path.basename(member.name).partition(".")
        member_key = os.path.join(os.path.dirname(member.name), stem)
        if member_key != key:
          if key is not None:
            yield printable(f"{path}:{key}"), None if error else sample, error
          key, sample, error = member_key, {}, None
        if member.size > max_bytes:
          error = ("file_too_large", printable(f"{member.name}: {member.size} bytes, over "
                                               f"{max_bytes}"))
        else:
          sample[printable(ext.lower())] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, Truncated) as e:
    where = printable(f"{path}:{key}" if key is not None else path)
    reason = "truncated_tar" if key is not None else "unreadable_file"
    yield where, None, (reason, printable(str(e)))
    return
  if key is not None:
    yield printable(f"{path}:{key}"), None if error else sample, error


def folder_units(folder: str) -> Iterator[Unit]:
  root = os.path.realpath(folder)
  names = sorted(os.listdir(root))
  for name in names:
    where = printable(os.path.join(folder, name))
    try:
      if (entry := _folder_entry(root, name, names)) is not None:
        yield where, names_as(os.fsencode, entry), None
    except Reject as reject:
      yield where, None, (reject.reason, printable(reject.detail))
    except OSError as e:
      yield where, None, ("unreadable_media", printable(f"{e.strerror or e}"))


def names_as(convert, entry: dict) -> dict:
  """`entry` with its names (str, or lists of them) passed through `convert`: a folder unit carries
  them as bytes (os.fsencode), since a file name need not be UTF-8 and Beam encodes str as UTF-8."""
  return {k: v if v is None else [convert(n) for n in v] if isinstance(v, list) else convert(v)
          for k, v in entry.items()}


def _folder_entry(root: str, name: str, names: list[str]) -> dict | None:
  """The payload of one folder entry (None for a media file's caption); Reject when it cannot be
  one (see the module docstring)."""
  stem, ext = os.path.splitext(name)
  path = media.inside(root, name)
  if os.path.isdir(path):
    inner = os.listdir(path)
    frames = sorted(f for f in inner if f.lower().endswith(IMAGE_EXTENSIONS))
    if "caption.txt" not in inner or not frames:
      raise Reject("incomplete_video", "a frame folder needs frames and caption.txt")
    return {"root": root, "frames": name, "names": frames}
  if is_media(name):
    caption = stem + ".txt" if stem + ".txt" in names else None
    return {"root": root, "media": name, "caption": caption}
  if ext.lower() == ".txt":
    if not any(is_media(n) and os.path.splitext(n)[0] == stem for n in names):
      raise Reject("caption_without_media", f"no image or video named {stem}.*")
    return None  # The caption of a media file: read with it.
  raise Reject("unknown_file", f"{ext or 'no extension'}: not an image, video or caption")
