"""Builders for the data-pipeline tests: crafted images, shards of records, one-dataset data configs."""

import io

import numpy as np
from PIL import Image

from data_pipelines import records
from flamingo_jax.config import DataConfig


def jpeg(seed=0, size=(50, 40)) -> bytes:
  """A random RGB JPEG of `size` (width, height)."""
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def write_shard(path_dir, kind, recs, prefix=None) -> str:
  with records.ShardWriter(str(path_dir), prefix or kind) as writer:
    for r in recs:
      writer.write(r)
  return str(path_dir)


def single(kind, path, **fields) -> DataConfig:
  """A data config with one dataset `kind` at `path` (its own held-out split too); the tokenizer
  object goes to build_mixture directly."""
  dataset = dict(kind=kind, path=path, eval_path=path, batch_size=2, seq_len=16, max_images=1,
                 num_frames=1, loss_weight=1.0) | fields
  return DataConfig.from_dict(dict(source="arrayrecord", tokenizer="(passed to build_mixture)",
                                   datasets={kind: dataset}), "data")
