"""The record schema of the three dataset kinds, and the ArrayRecord shard writer and reader.

One record (an ArrayRecord entry) is:

    b"FJR1" | uint32 little-endian header length | header (UTF-8 JSON) | payload blobs, concatenated

The header is `{"kind": KIND, "source": str, "parts": [PART, ...]}` and every PART is
`{"type": "text" | "image", "length": bytes in its blob}` (+ `"time": seconds` for video frames). The
blobs follow in the order of the parts: text as raw bytes (UTF-8 expected; checked by the pipeline, so a
bad byte is counted rather than lost at conversion), images as encoded JPEG / PNG bytes.

Kinds and their parts:

* `interleaved`: text and image parts in reading order (a web document).
* `pairs`: one image part, then one text part (the caption).
* `video`: image parts, one per frame sampled at 1 fps (each with `time`), then one text part.

Nothing is pickled: a record is parsed by `decode_record` only. Shards are named
`<prefix>-NNNNN.array_record`; `ShardWriter` writes each to `<name>.tmp` and renames it when the shard
is complete, so a crash never leaves a truncated shard under a final name. A dataset directory
(manifest.py) lists its shards in a manifest; `shard_paths` reads it, and globs older datasets.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct

from array_record.python import array_record_module

from data_pipelines import manifest

MAGIC = b"FJR1"
KINDS = ("interleaved", "pairs", "video")
SHARD_SUFFIX = ".array_record"


class SchemaError(ValueError):
  """A record that does not follow the schema above."""


@dataclasses.dataclass(frozen=True)
class Unreadable:
  """Stands in for a record its shard could not give (a corrupt chunk, a shard truncated or replaced
  since the stream started): `streams.ShardSource` returns it, `examples.ToExample` skips it."""
  shard: str  # The shard's path.
  index: int  # The record's index within the shard.


@dataclasses.dataclass
class Part:
  """One text segment (`data` = raw text bytes) or one image / frame (`data` = encoded image bytes)."""
  type: str  # "text" or "image"
  data: bytes
  time: float | None = None  # Seconds from the start of the video (video frames only).


@dataclasses.dataclass
class Record:
  kind: str
  source: str
  parts: list[Part]

  @property
  def images(self) -> list[Part]:
    return [p for p in self.parts if p.type == "image"]

  @property
  def texts(self) -> list[Part]:
    return [p for p in self.parts if p.type == "text"]


def interleaved(source: str, parts: list[tuple[str, bytes]]) -> Record:
  """[("text", b"..."), ("image", jpeg_bytes), ...] in reading order -> an interleaved record."""
  return Record("interleaved", source, [Part(t, d) for t, d in parts])


def pair(source: str, image: bytes, caption: bytes | str) -> Record:
  caption = caption.encode("utf-8") if isinstance(caption, str) else caption
  return Record("pairs", source, [Part("image", image), Part("text", caption)])


def video(source: str, frames: list[bytes], times: list[float], caption: bytes | str) -> Record:
  """Frames sampled at 1 fps (encoded images) with their times in seconds, and the caption."""
  caption = caption.encode("utf-8") if isinstance(caption, str) else caption
  return Record("video", source, [Part("image", f, float(t)) for f, t in zip(frames, times)] +
                [Part("text", caption)])


def encode_record(record: Record) -> bytes:
  if record.kind not in KINDS:
    raise SchemaError(f"Unknown record kind {record.kind!r}; expected one of {KINDS}.")
  parts = []
  for p in record.parts:
    if p.type not in ("text", "image"):
      raise SchemaError(f"Unknown part type {p.type!r}; expected 'text' or 'image'.")
    parts.append({"type": p.type, "length": len(p.data)} | ({} if p.time is None else {"time": p.time}))
  header = json.dumps({"kind": record.kind, "source": record.source, "parts": parts}).encode("utf-8")
  return b"".join([MAGIC, struct.pack("<I", len(header)), header] + [p.data for p in record.parts])


def decode_record(data: bytes) -> Record:
  """Inverse of `encode_record`; raises SchemaError on anything that does not follow the schema."""
  if data[:4] != MAGIC:
    raise SchemaError(f"Record does not start with {MAGIC!r} (got {data[:4]!r}): not a flamingo_jax "
                      "record; convert the data with the data_pipelines.convert CLI.")
  if len(data) < 8:
    raise SchemaError(f"Record of {len(data)} bytes is shorter than the 8-byte preamble.")
  (header_len,) = struct.unpack("<I", data[4:8])
  offset, parts = 8 + header_len, []
  try:
    header = json.loads(data[8:8 + header_len])
    kind, source = header["kind"], header["source"]
    for spec in header["parts"]:
      if spec["type"] not in ("text", "image"):
        raise ValueError(f"part type {spec['type']!r}")
      end = offset + int(spec["length"])
      parts.append(Part(spec["type"], data[offset:end], spec.get("time")))
      offset = end
  except (ValueError, KeyError, TypeError) as e:
    raise SchemaError(f"Record header is not the schema's JSON: {e!r}") from e
  if kind not in KINDS:
    raise SchemaError(f"Unknown record kind {kind!r}; expected one of {KINDS}.")
  if offset != len(data):
    raise SchemaError(f"Record payload is {len(data) - 8 - header_len} bytes but its header lists "
                      f"{offset - 8 - header_len}.")
  return Record(kind, source, parts)


class ShardWriter:
  """Writes records to `<out_dir>/<prefix>-NNNNN.array_record`, starting a new shard once the current
  one holds `max_shard_bytes`. Each shard is written under `.tmp` and renamed when closed."""

  def __init__(self, out_dir: str, prefix: str, max_shard_bytes: int = 256 << 20):
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.prefix, self.max_shard_bytes = out_dir, prefix, max_shard_bytes
    self.paths: list[str] = []  # Completed shards.
    self.num_records = 0
    self._writer, self._tmp_path, self._bytes = None, None, 0

  def write(self, record: Record):
    if self._writer is None:
      final = os.path.join(self.out_dir, f"{self.prefix}-{len(self.paths):05d}{SHARD_SUFFIX}")
      self._tmp_path = final + ".tmp"
      self._writer = array_record_module.ArrayRecordWriter(self._tmp_path, "group_size:1")
    data = encode_record(record)
    self._writer.write(data)
    self._bytes += len(data)
    self.num_records += 1
    if self._bytes >= self.max_shard_bytes:
      self._finish_shard()

  def _finish_shard(self):
    self._writer.close()
    final = self._tmp_path[:-len(".tmp")]
    os.replace(self._tmp_path, final)
    self.paths.append(final)
    self._writer, self._tmp_path, self._bytes = None, None, 0

  def close(self) -> list[str]:
    """Finishes the last shard; returns the paths of all shards written."""
    if self._writer is not None:
      self._finish_shard()
    return self.paths

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    elif self._writer is not None:  # Never publish a partial shard.
      self._writer.close()
      os.remove(self._tmp_path)


def shard_paths(path: str) -> list[str]:
  """Shard paths of `path`: a dataset directory with one kind, or a `<kind>` sub-directory of one
  (manifest.py) -> the shards its manifest lists, each checked to have the size it was written with
  (manifest.DatasetError naming the shard otherwise); a directory without a manifest (all its
  `*.array_record` files), a glob or one file -> the sorted matches. Raises FileNotFoundError naming
  `path` when there is no shard."""
  found = manifest.find(path)
  if found is not None:
    paths, looked_for = manifest.shards(*found), f"the shards listed in {found[0].root}"
  else:
    pattern = os.path.join(path, "*" + SHARD_SUFFIX) if os.path.isdir(path) else path
    paths, looked_for = sorted(glob.glob(pattern)), repr(pattern)
  if not paths:
    raise FileNotFoundError(f"No ArrayRecord shards at {path!r} (looked for {looked_for}); build "
                            "them with data_pipelines.convert or data_pipelines.demo, or fix the "
                            "path.")
  return paths


def check_shards(paths: list[str], kind: str) -> list[int]:
  """Reads the first record of every shard; returns the number of records of each [len(paths)].
  Raises ValueError naming the file on a file that is not a readable ArrayRecord shard or an empty
  shard, and SchemaError naming the file on a wrong kind or a record that is not ours."""
  counts = []
  for path in paths:
    num_records, first = _first_record(path)
    try:
      record = decode_record(first)
    except SchemaError as e:
      raise SchemaError(f"{path}: {e}") from e
    if record.kind != kind:
      raise SchemaError(f"{path} holds {record.kind!r} records but the dataset is configured as "
                        f"kind={kind!r}; fix the dataset's kind or path.")
    counts.append(num_records)
  return counts


def _first_record(path: str) -> tuple[int, bytes]:
  """(number of records, the first record's bytes) of the shard at `path`; ValueError naming it if
  it holds no records or is not an ArrayRecord file array_record can read."""
  try:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      if reader.ok() and reader.num_records() == 0:
        raise ValueError(f"Shard {path} holds no records; remove it or rebuild it.")
      return reader.num_records(), reader.read([0])[0]  # Not ok(): raises array_record's reason.
    finally:
      reader.close()
  except RuntimeError as e:
    raise ValueError(f"{path} is not a readable ArrayRecord shard ({e}); rebuild it with "
                     "data_pipelines.convert, or remove it from the dataset.") from e
