"""The demo corpus: every kind in both splits, and naming pages that bind fresh names to colours
with the held-out names kept out of training."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from data_pipelines import demo, records
from tests.builders import DEMO_SIZES


def test_demo_builds_both_splits_of_every_kind(demo_corpus):
  """(Its build time is benchmarks/data.py's `demo_build_s`.)"""
  _, info = demo_corpus
  for split in ("train", "eval"):
    assert set(info[split]) == {"interleaved", "pairs", "video", *demo.NAMING}
    for kind, path in info[split].items():
      records.check_shards(records.shard_paths(path),
                           "interleaved" if kind in demo.NAMING else kind)


def test_name_pools_are_disjoint_and_large():
  train, heldout = demo.nonsense_names("train"), demo.nonsense_names("heldout")
  assert (len(train), len(heldout)) == (810, 165)
  assert not set(train) & set(heldout)
  assert all(name.isalpha() and name[0].isupper() and name[1:].islower()
             for name in train + heldout)


def test_every_name_is_two_pieces_its_first_the_start_syllable(tokenizer):
  """Held-out names are new pairings of pieces the model has seen, and the first piece tells most
  of a page's names apart (the piece the binding must retrieve)."""
  for name in demo.nonsense_names("train") + demo.nonsense_names("heldout"):
    ids = tokenizer.encode(name)
    assert [tokenizer.decode([i]) for i in ids] == [name[:2], name[2:]]
    assert tokenizer.encode(f"red {name}")[-2:] == ids  # The same pieces after a colour word.


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
  for (split, pool), kind in itertools.product(pools.items(), demo.NAMING):
    pages = list(_pages(info[split][kind]))
    assert len(pages) == DEMO_SIZES[split][kind]
    spelled, (fewest, most) = demo.NAMING[kind]
    for page in pages:
      assert fewest <= len(page) <= most
      page_spelled = len(page[0][1]) == 2 if spelled is None else spelled
      bound = {}
      for colour, words in page:
        name = words[-1]
        # Spelled out: "red Baux", the colour word, then the name; otherwise "Baux".
        assert words == ([colour, name] if page_spelled else [name])
        assert name in pool  # Held-out names only in held-out pages, never in training.
        assert bound.setdefault(colour, name) == name  # One name per colour on the page ...
      assert len(set(bound.values())) == len(bound)  # ... and one colour per name.
      assert len(page) > len(bound)  # At least one name asked back.


def test_a_corpus_from_another_version_is_named_not_used(demo_corpus, tmp_path):
  demo.check_version(demo_corpus[0])  # Built by this code.
  with pytest.raises(ValueError, match=f"{tmp_path} is version unknown .older.*builds version "
                                       f"{demo.CORPUS_VERSION}"):
    demo.check_version(str(tmp_path))  # An older corpus: no version file.
  (tmp_path / demo.VERSION_FILE).write_text('{"version": 1}')
  with pytest.raises(ValueError, match="is version 1, this code builds"):
    demo.check_version(str(tmp_path))
