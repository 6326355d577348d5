"""Converters: TFDS (coco_captions under tfds.testing.mock_data), WebDataset tars made here,
MMC4 / OBELICS JSONL and Parquet, and a folder of images and frame sequences."""

import base64
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python import array_record_module

from data_pipelines import convert, records
from data_pipelines.mixture import build_mixture
from tests.data.builders import jpeg, single


def read_all(path):
  out = []
  for shard in records.shard_paths(path):
    reader = array_record_module.ArrayRecordReader(shard)
    out += [records.decode_record(r) for r in reader.read_all()]
    reader.close()
  return out


def layout(record):
  return [p.type if p.type == "image" else p.data.decode() for p in record.parts]


def test_tfds_coco_captions_under_mock_data(tmp_path, tokenizer):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds.data_source("coco_captions", split="train")
    captions = [[str(c) for c in source[i]["captions"]["text"]] for i in range(3)]
    counts = convert.from_tfds("coco_captions", "train", str(tmp_path))
  pairs = read_all(str(tmp_path))
  assert counts == {"written": sum(map(len, captions))}
  assert [p.texts[0].data.decode() for p in pairs] == [c for cs in captions for c in cs]
  assert all(p.kind == "pairs" and p.images[0].data[:2] == b"\xff\xd8" for p in pairs)
  step = next(build_mixture(single("pairs", str(tmp_path)), image_size=16, tokenizer=tokenizer))
  assert step["pairs"]["images"].shape == (2, 1, 1, 16, 16, 3)


def add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar_of_pairs_and_mmc4_documents(tmp_path):
  path = tmp_path / "shard-000000.tar"
  doc = {"url": "http://a.b/page", "text_list": ["first sentence", "second sentence"],
         "image_info": [{"image_base64": base64.b64encode(jpeg(3)).decode(), "matched_text_index": 1},
                        {"image_base64": "%%% not base64", "matched_text_index": 0}]}
  with tarfile.open(path, "w") as tar:
    add(tar, "000000.jpg", jpeg(1))
    add(tar, "000000.txt", b"a photo of a cat")
    add(tar, "000001.png", b"\x89PNG stand-in bytes")
    add(tar, "000001.txt", b"a drawing")
    add(tar, "000002.json", json.dumps(doc).encode())
    add(tar, "000003.txt", b"caption without an image")
  out = tmp_path / "out"
  counts = convert.from_webdataset([str(path)], str(out))
  assert counts == {"written_pairs": 2, "written_interleaved": 1, "missing_image": 1,
                    "unreadable_sample": 1}
  pairs = read_all(str(out / "pairs"))
  assert [(p.source, p.texts[0].data, p.images[0].data) for p in pairs] == [
      ("000000", b"a photo of a cat", jpeg(1)), ("000001", b"a drawing", b"\x89PNG stand-in bytes")]
  (document,) = read_all(str(out / "interleaved"))
  assert layout(document) == ["first sentence", "image", "second sentence"]
  assert document.images[0].data == jpeg(3) and document.source == "http://a.b/page"


def test_jsonl_mmc4_and_obelics_rows_with_image_files(tmp_path):
  (tmp_path / "img").mkdir()
  (tmp_path / "img" / "a.jpg").write_bytes(jpeg(1))
  (tmp_path / "img" / "b.jpg").write_bytes(jpeg(2))
  rows = [
      {"url": "mmc4", "text_list": ["s0", "s1", "s2"],
       "image_info": [{"image_name": "a.jpg", "matched_text_index": 2},
                      {"image_name": "b.jpg", "matched_text_index": 0},
                      {"image_name": "gone.jpg", "matched_text_index": 1}]},
      {"url": "obelics", "texts": ["intro", None, "outro"], "images": [None, "b.jpg", None]},
      {"url": "empty", "texts": [None], "images": ["gone.jpg"]},
  ]
  path = tmp_path / "docs.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows))
  out = tmp_path / "out"
  subprocess.run([sys.executable, "-m", "data_pipelines.convert", "jsonl", "--out", str(out),
                  "--image_root", str(tmp_path / "img"), str(path)], check=True, capture_output=True)
  mmc4, obelics = read_all(str(out))
  assert layout(mmc4) == ["image", "s0", "s1", "image", "s2"]
  assert [p.data for p in mmc4.images] == [jpeg(2), jpeg(1)]
  assert layout(obelics) == ["intro", "image", "outro"] and obelics.source == "obelics"


def test_parquet_obelics_rows_with_image_bytes(tmp_path):
  table = pa.table({"texts": [["hello", None, "bye"]], "images": [[None, jpeg(4), None]],
                    "url": ["u"]})
  pq.write_table(table, tmp_path / "docs.parquet")
  counts = convert.from_parquet([str(tmp_path / "docs.parquet")], str(tmp_path / "out"))
  (document,) = read_all(str(tmp_path / "out"))
  assert counts == {"written": 1}
  assert layout(document) == ["hello", "image", "bye"] and document.images[0].data == jpeg(4)


def test_folder_of_pairs_and_frame_sequences(tmp_path, tokenizer):
  src = tmp_path / "src"
  (src / "clip").mkdir(parents=True)
  for i in range(4):
    (src / "clip" / f"frame{i:02d}.jpg").write_bytes(jpeg(10 + i))
  (src / "clip" / "caption.txt").write_text("a moving thing\n")
  (src / "cat.jpg").write_bytes(jpeg(1))
  (src / "cat.txt").write_text("a cat\n")
  (src / "lonely.jpg").write_bytes(jpeg(2))
  counts = convert.from_folder(str(src), str(tmp_path / "out"))
  assert counts == {"written_video": 1, "written_pairs": 1, "missing_caption": 1}
  (clip,) = read_all(str(tmp_path / "out" / "video"))
  assert [p.time for p in clip.images] == [0, 1, 2, 3] and clip.texts[0].data == b"a moving thing"
  assert [p.data for p in clip.images] == [jpeg(10 + i) for i in range(4)]
  config = single("video", str(tmp_path / "out" / "video"), batch_size=1, num_frames=4)
  step = next(build_mixture(config, image_size=16, tokenizer=tokenizer))
  assert step["video"]["images"].shape == (1, 1, 4, 16, 16, 3)


def test_animated_gif_becomes_a_video_sampled_at_1_fps(tmp_path):
  from PIL import Image
  colours = [(20 * i + 30, 250 - 20 * i, (97 * i) % 256) for i in range(10)]
  frames = [Image.new("RGB", (16, 16), c) for c in colours]
  src = tmp_path / "src"
  src.mkdir()
  frames[0].save(src / "clip.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
  (src / "clip.txt").write_text("colours changing")
  counts = convert.from_folder(str(src), str(tmp_path / "out"))
  assert counts == {"written_video": 1}
  (clip,) = read_all(str(tmp_path / "out" / "video"))
  assert [p.time for p in clip.images] == [0, 1, 2, 3, 4]  # 10 frames of 0.5 s.
  means = [np.asarray(Image.open(io.BytesIO(p.data))).reshape(-1, 3).mean(0) for p in clip.images]
  for mean, colour in zip(means, colours[::2], strict=True):
    assert np.abs(mean - colour).max() < 12

