"""Safetensors checkpoints read with plain file reads: a header parser and one tensor at a time.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets),
then the data. Nothing is unpickled: pickled checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused.
safetensors' own numpy backend cannot return bfloat16; ml_dtypes gives numpy that dtype.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_dtypes
import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lives: its shard, dtype, shape and byte offset from the start of the file."""

  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int


def _read_header(path: str) -> dict[str, TensorInfo]:
  """A safetensors file is an 8-byte little-endian header length, a JSON header, then the data."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which the importer does "
                       f"not read (known: {', '.join(_SAFETENSORS_DTYPES)}).")
    infos[name] = TensorInfo(path, np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]),
                             tuple(entry["shape"]), 8 + size + entry["data_offsets"][0])
  return infos


def checkpoint_tensors(checkpoint_dir: str) -> dict[str, TensorInfo]:
  """name -> TensorInfo for every tensor of a safetensors checkpoint directory (one file, or the
  shards named by `*.safetensors.index.json`); reads only the headers."""
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
    with open(os.path.join(checkpoint_dir, indexes[0])) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
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
    raise ValueError(f"{info.file} is truncated: it ends inside a tensor of shape {info.shape}.")
  return data.reshape(info.shape)
