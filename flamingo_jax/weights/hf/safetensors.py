"""Safetensors checkpoints read with plain file reads: checked headers, then one tensor at a time.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets),
then the data. Every header is checked against its file before a tensor is read: a file that is not
one (a Git LFS pointer, a truncated download, a corrupt header) is a `SafetensorsError` naming the
file and the tensor, never a bare MemoryError or KeyError. Nothing is unpickled: pickled checkpoints
(`.bin`, `.pt`, `.pth`, `.ckpt`) are refused. safetensors' own numpy backend cannot return
bfloat16; ml_dtypes gives numpy that dtype.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_dtypes
import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The first line of a Git LFS pointer: what a clone without `git lfs` holds in place of the weights.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
# safetensors' own bound on the JSON header (its HeaderTooLarge error).
MAX_HEADER_BYTES = 100_000_000
ENTRY_KEYS = ("dtype", "shape", "data_offsets")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
  """A safetensors checkpoint file that cannot be read; the message names the file (and tensor)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lives: its shard, dtype, shape and byte offset from the start of the file."""

  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int


def _refuse_lfs_pointer(path: str, start: bytes) -> None:
  if start.startswith(LFS_POINTER):
    raise SafetensorsError(
        f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in "
        f"{os.path.dirname(os.path.abspath(path))} (or download the file itself).")


def _parse_json(path: str, text: bytes, what: str):
  try:
    return json.loads(text)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    raise SafetensorsError(f"{path}: its {what} is not valid JSON ({e}); the file is corrupt or "
                           "not a safetensors file.") from None


def _header(path: str) -> tuple[dict, int, int]:
  """(the parsed JSON header, where the data starts, its size in bytes), the header length checked
  against the file's size before the header is read."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    start = f.read(len(LFS_POINTER))
    _refuse_lfs_pointer(path, start)
    if size < 8:
      raise SafetensorsError(f"{path} is {size} bytes, too short to be a safetensors file (8-byte "
                             "header length, header, data): the file is truncated.")
    length = int.from_bytes(start[:8], "little")
    if length > min(size - 8, MAX_HEADER_BYTES):
      raise SafetensorsError(
          f"{path}: its header length ({length} bytes) exceeds the {size - 8} bytes after it (or "
          f"safetensors' {MAX_HEADER_BYTES}-byte bound): the file is truncated or not a "
          "safetensors file.")
    f.seek(8)
    header = _parse_json(path, f.read(length), "header")
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: its header is a JSON {type(header).__name__}, not an object "
                           "of tensors: the file is corrupt or not a safetensors file.")
  return header, 8 + length, size - 8 - length


def _is_non_negative_int(value) -> bool:
  return type(value) is int and value >= 0  # Not bool, which is an int.


def _check_entry(where: str, entry, data_size: int) -> None:
  """Raises SafetensorsError unless `entry` (at `where`: file and tensor) has a known dtype, a shape
  of non-negative ints and [begin, end] offsets inside the data spanning exactly that many bytes."""
  if not isinstance(entry, dict) or any(key not in entry for key in ENTRY_KEYS):
    raise SafetensorsError(f"{where}: its header entry lacks one of {', '.join(ENTRY_KEYS)}.")
  dtype, shape, offsets = (entry[key] for key in ENTRY_KEYS)
  if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
    raise SafetensorsError(f"{where} has dtype {dtype!r}, which the importer does not read "
                           f"(known: {', '.join(_SAFETENSORS_DTYPES)}).")
  if not isinstance(shape, list) or not all(_is_non_negative_int(d) for d in shape):
    raise SafetensorsError(f"{where} has shape {shape!r}, not a list of non-negative integers.")
  if (not isinstance(offsets, list) or len(offsets) != 2
      or not all(map(_is_non_negative_int, offsets)) or offsets[0] > offsets[1]):
    raise SafetensorsError(f"{where} has data_offsets {offsets!r}, not [begin, end] with "
                           "0 <= begin <= end.")
  if offsets[1] > data_size:
    raise SafetensorsError(f"{where} has data_offsets {offsets} past the end of the data "
                           f"({data_size} bytes): the file is truncated.")
  nbytes = math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
  if offsets[1] - offsets[0] != nbytes:
    raise SafetensorsError(f"{where} spans {offsets[1] - offsets[0]} bytes but dtype {dtype} and "
                           f"shape {shape} take {nbytes}: the header is corrupt.")


def _read_header(path: str) -> dict[str, TensorInfo]:
  """name -> TensorInfo of every tensor in one safetensors file, each entry checked."""
  header, data_start, data_size = _header(path)
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    _check_entry(f"{path}: tensor {name}", entry, data_size)
    infos[name] = TensorInfo(path, np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]),
                             tuple(entry["shape"]), data_start + entry["data_offsets"][0])
  return infos


def _index_shards(checkpoint_dir: str, index: str) -> list[str]:
  """The shard files an `*.safetensors.index.json` names, each checked to be in `checkpoint_dir`."""
  path = os.path.join(checkpoint_dir, index)
  with open(path, "rb") as f:
    text = f.read()
  _refuse_lfs_pointer(path, text)
  weight_map = _parse_json(path, text, "content")
  weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise SafetensorsError(f"{path} has no weight_map (tensor name -> shard file): it is not a "
                           "safetensors index.")
  shards = sorted(set(weight_map.values()))
  missing = [s for s in shards if not os.path.isfile(os.path.join(checkpoint_dir, s))]
  if missing:
    raise SafetensorsError(f"{path} names {len(missing)} shard(s) not in {checkpoint_dir}, e.g. "
                           f"{missing[:3]}: the download is incomplete.")
  return shards


def checkpoint_tensors(checkpoint_dir: str) -> dict[str, TensorInfo]:
  """name -> TensorInfo for every tensor of a safetensors checkpoint directory (one file, or the
  shards named by `*.safetensors.index.json`); reads only the headers."""
  if not os.path.isdir(checkpoint_dir):
    raise ValueError(f"{checkpoint_dir} is not a directory: pass the save_pretrained directory "
                     "(config.json and the safetensors files).")
  files = sorted(os.listdir(checkpoint_dir))
  pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
  indexes = [f for f in files if f.endswith(".safetensors.index.json")]
  single = [f for f in files if f.endswith(".safetensors")]
  if not indexes and not single:
    hint = (f"It holds pickled weights ({', '.join(pickled)}), which are never unpickled here. "
            if pickled else "")
    raise ValueError(
        f"No safetensors checkpoint in {checkpoint_dir}. {hint}Convert it with transformers: "
        "`Model.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)`.")
  if len(indexes) > 1:
    raise ValueError(f"{checkpoint_dir} has several index files ({', '.join(indexes)}); keep one.")
  if indexes:
    shards = _index_shards(checkpoint_dir, indexes[0])
  elif len(single) == 1:
    shards = single
  else:
    raise ValueError(f"{checkpoint_dir} has several safetensors files ({', '.join(single)}) but no "
                     "`*.safetensors.index.json` saying which tensors they hold.")
  infos = {}
  for shard in shards:
    infos.update(_read_header(os.path.join(checkpoint_dir, shard)))
  return infos


def read_tensor(info: TensorInfo) -> np.ndarray:
  """One tensor from its shard, in the checkpoint's dtype."""
  with open(info.file, "rb") as f:
    f.seek(info.offset)
    count = math.prod(info.shape)
    data = np.fromfile(f, dtype=info.dtype, count=count)
  if data.size != count:
    raise SafetensorsError(f"{info.file} is truncated: it ends inside a tensor of shape "
                           f"{info.shape} (it changed since its header was read).")
  return data.reshape(info.shape)
