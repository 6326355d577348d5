"""Shared builders for the data-pipeline tests: the demo corpus (built once per test session, ~5 s),
its tokenizer, and helpers that write crafted records and images. (Not named conftest.py: the suite's
tests import tests/conftest.py as `conftest`.) Test modules import the fixtures they use."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data_pipelines import demo, records
from data_pipelines.tokenizer import Tokenizer


_DEMO = {}  # Built once per session, whichever test module asks first.


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
  if not _DEMO:
    root = str(tmp_path_factory.mktemp("demo"))
    _DEMO.update(root=root, info=demo.build(root))
  return _DEMO["root"], _DEMO["info"]


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


def single(kind, path, **fields):
  """A data config with one dataset `kind` at `path`."""
  dataset = dict(kind=kind, path=path, batch_size=2, seq_len=16, max_images=1, num_frames=1,
                 loss_weight=1.0) | fields
  return ml_collections.ConfigDict(dict(seed=0, num_workers=0, accumulation="all",
                                        datasets={kind: dataset}))
