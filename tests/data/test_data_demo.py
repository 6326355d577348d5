"""The demo corpus: every kind in both splits, and naming pages that bind fresh names to colours
with the held-out names kept out of training."""

import io
import time

import numpy as np
from PIL import Image

from data_pipelines import demo, records


def test_demo_builds_quickly_with_both_splits_of_every_kind(tmp_path):
  start = time.perf_counter()
  info = demo.build(str(tmp_path))
  assert time.perf_counter() - start < 60
  for split in ("train", "eval"):
    assert set(info[split]) == {"interleaved", "pairs", "video", "naming"}
    for kind, path in info[split].items():
      records.check_shards(records.shard_paths(path), "interleaved" if kind == "naming" else kind)


def test_name_pools_are_disjoint_and_large():
  train, heldout = demo.nonsense_names("train"), demo.nonsense_names("heldout")
  assert (len(train), len(heldout)) == (1238, 412)
  assert not set(train) & set(heldout)
  assert all(name.isalpha() and name.islower() for name in train + heldout)


def _colour(image: bytes) -> str:
  """The demo colour nearest to the mean of the image's bright (glyph) pixels."""
  pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), np.float32).reshape(-1, 3)
  glyph = pixels[pixels.max(axis=1) > 150].mean(axis=0)
  return min(demo.COLOURS, key=lambda c: np.sum((np.array(demo.COLOURS[c]) - glyph) ** 2))


def _pages(path):
  from array_record.python import array_record_module
  for shard in records.shard_paths(path):
    reader = array_record_module.ArrayRecordReader(shard)
    for data in reader.read_all():
      parts = records.decode_record(data).parts
      yield [(_colour(parts[i].data), parts[i + 1].data.decode().split())
             for i in range(0, len(parts), 2)]
    reader.close()


def test_naming_pages_bind_one_fresh_name_per_colour(demo_corpus):
  _, info = demo_corpus
  pools = {"train": set(demo.nonsense_names("train")), "eval": set(demo.nonsense_names("heldout"))}
  for split, pool in pools.items():
    pages = list(_pages(info[split]["naming"]))
    assert len(pages) == demo.SIZES[split]["naming"]
    for page in pages:
      assert demo.NAMING_IMAGES[0] <= len(page) <= demo.NAMING_IMAGES[1]
      bound = {}
      for colour, words in page:
        name = words[-1]
        if len(words) == 2:  # "red dax": the colour word, then the name.
          assert words[0] == colour
        assert name in pool  # Held-out names only in held-out pages, never in training.
        assert bound.setdefault(colour, name) == name  # One name per colour on the page ...
      assert len(set(bound.values())) == len(bound)  # ... and one colour per name.
      assert len(page) > len(bound)  # At least one name asked back.
