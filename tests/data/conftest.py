"""Shared builders for the data-pipeline tests: the demo corpus (built once per session, ~5 s), its
tokenizer, and helpers that write crafted records and images."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines import demo, records
from data_pipelines.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("demo"))
  return root, demo.build(root)


@pytest.fixture(scope="session")
def tokenizer(demo_corpus):
  return Tokenizer(demo_corpus[1]["tokenizer"])


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
