r"""Converter benchmark: an MMC4-style JSONL corpus with bad rows through the Beam pipeline.

  python benchmarks/convert.py [--docs 20000] [--bad_fraction 0.05] [--workers 2]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}.

The corpus (made here, in a temporary directory): `docs` MMC4 rows (`text_list` of 5 sentences,
`image_info` with 3 images named under --image_root, drawn from 64 JPEGs of 320x240, quality 90,
cut from scikit-learn's two sample photos), of which `bad_fraction` are replaced by bad rows cycling
through BAD_ROWS (broken JSON, invalid UTF-8, wrong types, names outside the root, missing images...).

* convert_docs_per_s: rows (good and bad) per second of wall time of `pipeline.run`, Beam's
  DirectRunner with `workers` processes, start-up and publishing included.
* convert_docs_per_s_1_process: the same run in one process (DirectRunner in_memory).
* convert_good_docs_kept_fraction: good documents found in the output (by url) / good documents.
* convert_bad_rows_counted_fraction: rows counted as skipped / bad rows; bad rows written: 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter  # noqa: E402
from data_pipelines import images, records  # noqa: E402
from data_pipelines.convert import pipeline  # noqa: E402
from data_pipelines.convert.media import Limits  # noqa: E402
from data_pipelines.convert.sources import Converter  # noqa: E402

emit = emitter("convert")
POOL = 64


def _photos(folder: str) -> list[str]:
  """POOL JPEGs of 320x240 under `folder`; their names."""
  from sklearn.datasets import load_sample_images
  photos, rng, names = load_sample_images().images, np.random.default_rng(0), []
  for i in range(POOL):
    photo = photos[i % 2]
    y, x = rng.integers(0, photo.shape[0] - 240), rng.integers(0, photo.shape[1] - 320)
    names.append(f"img{i:03d}.jpg")
    with open(os.path.join(folder, names[-1]), "wb") as f:
      f.write(images.encode_jpeg(np.ascontiguousarray(photo[y:y + 240, x:x + 320]), quality=90))
  return names


def good_row(i: int, names: list[str]) -> dict:
  words = "the a photo of small large red blue cat dog tree house on near under".split()
  rng = np.random.default_rng(i)
  sentences = [" ".join(rng.choice(words, 12)) + "." for _ in range(5)]
  info = [{"image_name": names[(3 * i + k) % POOL], "matched_text_index": int(k + 1)}
          for k in range(3)]
  return {"url": f"good/{i}", "text_list": sentences, "image_info": info}


# Bad rows: each a function of the row index -> the line's bytes. Every one is skipped whole.
BAD_ROWS = [
    lambda i: b'{"url": "bad/%d", "text_list": ["broken' % i,  # Not JSON.
    lambda i: b'{"url": "bad/%d", "text_list": ["caf\xe9"], "image_info": []}' % i,  # Not UTF-8.
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": None, "image_info": []}).encode(),
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": "one string", "image_info": []}).encode(),
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": [7], "image_info": []}).encode(),
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": ["x"], "image_info": [
        {"image_name": "../outside.jpg", "matched_text_index": 0}]}).encode(),
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": ["x"], "image_info": [
        {"image_name": "missing.jpg", "matched_text_index": 0}]}).encode(),
    lambda i: json.dumps({"url": f"bad/{i}", "text_list": ["x"], "image_info": [
        {"image_name": "img000.jpg", "matched_text_index": 5}]}).encode(),
    lambda i: json.dumps([f"bad/{i}"]).encode(),  # Not an object.
    lambda i: json.dumps({"url": f"bad/{i}", "texts": ["a"],
                          "images": [None, "img000.jpg"]}).encode(),
]


def write_corpus(root: str, docs: int, bad_fraction: float) -> tuple[str, str, set[str], int]:
  """(jsonl path, image root, urls of the good rows, number of bad rows)."""
  image_root = os.path.join(root, "images")
  os.makedirs(image_root)
  names = _photos(image_root)
  every = round(1 / bad_fraction)
  path, good, bad = os.path.join(root, "docs.jsonl"), set(), 0
  with open(path, "wb") as f:
    for i in range(docs):
      if i % every == every - 1:
        f.write(BAD_ROWS[bad % len(BAD_ROWS)](i) + b"\n")
        bad += 1
      else:
        row = good_row(i, names)
        f.write(json.dumps(row).encode() + b"\n")
        good.add(row["url"])
  return path, image_root, good, bad


def kept_urls(out: str) -> set[str]:
  from array_record.python import array_record_module
  urls = set()
  for shard in records.shard_paths(os.path.join(out, "interleaved")):
    reader = array_record_module.ArrayRecordReader(shard)
    urls.update(records.decode_record(r).source for r in reader.read_all())
    reader.close()
  return urls


def timed_run(path: str, image_root: str, out: str, workers: int) -> tuple[float, pipeline.Summary]:
  start = time.perf_counter()
  summary = pipeline.run(Converter("jsonl", Limits(image_root=image_root)), [path], out,
                         runner=pipeline.Runner(num_workers=workers))
  return time.perf_counter() - start, summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--docs", type=int, default=20_000)
  parser.add_argument("--bad_fraction", type=float, default=0.05)
  parser.add_argument("--workers", type=int, default=2)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    path, image_root, good, bad = write_corpus(root, args.docs, args.bad_fraction)
    for workers, metric in ((args.workers, "convert_docs_per_s"),
                            (1, "convert_docs_per_s_1_process")):
      out = os.path.join(root, f"out{workers}")
      seconds, summary = timed_run(path, image_root, out, workers)
      emit(metric, args.docs / seconds, "docs/s", docs=args.docs, seconds=round(seconds, 2),
           workers=workers, runner="DirectRunner")
    urls = kept_urls(out)
    skipped = sum(summary.family("skipped").values())
    emit("convert_good_docs_kept_fraction", len(urls & good) / len(good), "fraction",
         good=len(good), kept=len(urls & good), bad_written=len(urls - good))
    emit("convert_bad_rows_counted_fraction", skipped / bad, "fraction", bad=bad,
         skipped=summary.family("skipped"))


if __name__ == "__main__":
  main()
