"""The tfds converter: coco_captions under tfds.testing.mock_data (the good path, read by the data
loader), crafted examples of what a TFDS dataset can hold that is unusable (empty, non-UTF-8 or no
captions, image arrays of the wrong shape or size, missing features, an example that cannot be
read), and a dataset that is not there (refused before anything is written)."""

import os

import numpy as np
import pytest

from data_pipelines.convert import sources
from data_pipelines.mixture import build_mixture
from tests.data.builders import single
from tests.data.convert import corpus
from tests.data.convert.check import Expected, check, convert, read_records

tfds = pytest.importorskip("tensorflow_datasets")

IMAGE = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def fresh_sources():
  """Each test's mock: data sources are cached per (name, split, data_dir)."""
  sources._tfds_source.cache_clear()
  yield
  sources._tfds_source.cache_clear()


def test_coco_captions_under_mock_data(tmp_path, tokenizer):
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds.data_source("coco_captions", split="train")
    captions = [[c.decode() if isinstance(c, bytes) else str(c)
                 for c in source[i]["captions"]["text"]] for i in range(3)]
    summary = convert("tfds", ["coco_captions"], tmp_path / "out", corpus.limits(None),
                      tfds_name="coco_captions")
  pairs = read_records(tmp_path / "out")
  kept = [c.strip() for cs in captions for c in cs if c.strip()]  # Captions are stripped.
  assert len(kept) > 3 and summary.family("written") == {"pairs": len(kept)}
  assert sorted(p.texts[0].data.decode() for p in pairs) == sorted(kept)
  assert all(p.kind == "pairs" and p.images[0].data[:2] == b"\xff\xd8" for p in pairs)
  step = next(build_mixture(single("pairs", str(tmp_path / "out")), image_size=16,
                            tokenizer=tokenizer))
  assert step["pairs"]["images"].shape == (2, 1, 1, 16, 16, 3)


class Examples:
  """A data source of crafted examples; a None example cannot be read."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    if self.examples[i] is None:
      raise ValueError(f"record {i} is corrupt")
    return self.examples[i]


def example(image=IMAGE, captions=(b"a caption",)):
  return {"image": image, "captions": {"text": np.array(list(captions), dtype=object)}}


# (example, [(counter, part)], captions written).
CRAFTED = [
    (example(captions=[b"one", "two"]), [], 2),
    (example(captions=[b"kept", b"", b"  "]),
     [("dropped/no_text", "captions/text[1]"), ("dropped/no_text", "captions/text[2]")], 1),
    (example(captions=[b"kept", "café".encode("latin-1")]),
     [("dropped/invalid_utf8", "captions/text[1]")], 1),
    (example(captions=[b"", b" "]), [("skipped/no_text", "")], 0),
    (example(captions=["café".encode("latin-1")]), [("skipped/invalid_utf8", "")], 0),
    (example(captions=[]), [("skipped/no_text", "")], 0),
    (example(captions=[b"x" * 1500]), [("cut/max_text_bytes", "")], 1),
    (example(image=np.zeros((200, 200, 3), np.uint8)), [("skipped/enormous_image", "")], 0),
    (example(image=np.zeros((40, 50, 4), np.uint8)), [("skipped/bad_image_array", "")], 0),
    (example(image=np.zeros((0, 0, 3), np.uint8)), [("skipped/bad_image_array", "")], 0),
    (example(image=np.zeros((40, 50, 3), np.float32)), [("skipped/bad_image_array", "")], 0),
    (example(image=b"not an array"), [("skipped/bad_image_array", "")], 0),
    (example(image=IMAGE[..., 0]), [], 1),  # Greyscale [H, W]: kept.
    (example(image=IMAGE[..., :1]), [], 1),  # [H, W, 1]: kept.
    ({"captions": {"text": [b"no image"]}}, [("skipped/missing_feature", "")], 0),
    ({"image": IMAGE}, [("skipped/missing_feature", "")], 0),
    ({"image": IMAGE, "captions": b"not a dict"}, [("skipped/missing_feature", "")], 0),
    (None, [("skipped/unreadable_example", "")], 0),
]


def test_crafted_examples_are_kept_or_counted(tmp_path):
  def data_source(*_, **__):
    return Examples([e for e, _, _ in CRAFTED])

  expected = Expected()
  for i, (_, counts, written) in enumerate(CRAFTED):
    where = f"coco_captions/train:{i}"
    for counter, part in counts:
      expected.counted(counter, where, part)
    for _ in range(written):
      expected.written("pairs", where)
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=data_source):
    summary = convert("tfds", ["coco_captions"], tmp_path / "out", corpus.limits(None),
                      tfds_name="coco_captions")
  check(summary, tmp_path / "out", expected)


def test_a_dataset_that_is_not_there_is_refused_before_any_work(tmp_path):
  with pytest.raises(sources.SourceError) as error:
    convert("tfds", ["no_such_dataset"], tmp_path / "out", corpus.limits(None),
            tfds_name="no_such_dataset", tfds_data_dir=str(tmp_path / "tfds"))
  assert "no_such_dataset" in str(error.value) and "\n" not in str(error.value)
  assert os.listdir(tmp_path) == []
