r"""Converters to the record schema (records.py), with progress bars. Each returns its counts.

  python -m data_pipelines.convert jsonl   --out DIR --image_root IMAGES docs-*.jsonl
  python -m data_pipelines.convert parquet --out DIR [--image_root IMAGES] docs-*.parquet
  python -m data_pipelines.convert wds     --out DIR shards-*.tar
  python -m data_pipelines.convert tfds    --out DIR --name coco_captions --split train \
      [--data_dir D]
  python -m data_pipelines.convert folder  --out DIR FOLDER

Sources
* jsonl / parquet, one interleaved document per row, in either layout:
  - OBELICS: `texts` and `images`, aligned lists in reading order where each position holds a text
    or an image (the other entry null); an image is bytes (parquet) or a file name under
    --image_root.
  - MMC4: `text_list` (sentences) and `image_info` ([{"image_name" or "image_base64",
    "matched_text_index"}]); each image goes before its matched sentence (as OpenFlamingo does).
* wds: WebDataset tars (OpenFlamingo's format), samples grouped by key: `KEY.jpg|png|jpeg|webp` with
  `KEY.txt` -> an image-text pair; `KEY.json` holding an MMC4 document with `image_base64` ->
  an interleaved document.
* tfds: any prepared TFDS dataset with an image and captions, read through `tfds.data_source`
  (nothing is downloaded; build it first with `tfds build`). `coco_captions`: one pair per caption
  (--caption_key captions/text); datasets with one string caption: --caption_key caption.
* folder: `NAME.jpg|png|...` next to `NAME.txt` -> a pair; an animated `NAME.gif|webp|png` next to
  `NAME.txt` -> a video, sampled at 1 fps from its frame durations; a sub-folder holding frames
  (`*.jpg|png`, in name order, taken as 1 fps: frame i at i seconds) and `caption.txt` -> a video.
  (MP4 and other video files are not decoded: no video decoder is in the stack; extract frames at
  1 fps, e.g. `ffmpeg -i v.mp4 -vf fps=1 dir/%05d.jpg`, and convert the folder.)

A missing image file or an undecodable base64 string is counted ("missing_image") and left out; a
row with no text and no image left is counted ("empty_document") and not written. Image bytes are
stored as they come (the pipeline checks them, counted, at training time); decoded arrays (TFDS) are
stored as JPEG (quality 95).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import io
import json
import os
import tarfile

import numpy as np
from absl import app, flags
from PIL import Image
from tqdm import tqdm

from data_pipelines import images as image_ops
from data_pipelines import records

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _read_image_file(root: str, name: str, counts: collections.Counter) -> bytes | None:
  try:
    return _read(os.path.join(root, name))
  except OSError:
    counts["missing_image"] += 1
    return None


def _decode_base64(data: str, counts: collections.Counter) -> bytes | None:
  try:
    return base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError):
    counts["missing_image"] += 1
    return None


def document_parts(row: dict, image_root: str | None, counts: collections.Counter
                   ) -> list[tuple[str, bytes]]:
  """One OBELICS- or MMC4-layout row -> [("text" | "image", bytes)] in reading order."""
  parts = []
  if "texts" in row and "images" in row:  # OBELICS.
    for text, image in zip(row["texts"], row["images"]):
      if text is not None:
        parts.append(("text", text.encode("utf-8") if isinstance(text, str) else bytes(text)))
      elif isinstance(image, (bytes, bytearray)):
        parts.append(("image", bytes(image)))
      elif isinstance(image, dict) and "bytes" in image:  # HF datasets' Image feature.
        parts.append(("image", bytes(image["bytes"])))
      elif isinstance(image, str) and image_root is not None:
        if (data := _read_image_file(image_root, image, counts)) is not None:
          parts.append(("image", data))
      elif image is not None:
        counts["missing_image"] += 1
    return parts
  if "text_list" in row:  # MMC4.
    before = collections.defaultdict(list)  # Sentence index -> images placed before it.
    for info in row.get("image_info") or []:
      if info.get("image_base64"):
        data = _decode_base64(info["image_base64"], counts)
      elif image_root is not None and info.get("image_name"):
        data = _read_image_file(image_root, info["image_name"], counts)
      else:
        counts["missing_image"] += 1
        data = None
      if data is not None:
        before[int(info.get("matched_text_index", 0))].append(data)
    for i, sentence in enumerate(row["text_list"]):
      parts += [("image", data) for data in before.pop(i, [])]
      parts.append(("text", sentence.encode("utf-8")))
    for i in sorted(before):  # Matched to a sentence index past the end: keep them, at the end.
      parts += [("image", data) for data in before[i]]
    return parts
  raise records.SchemaError(f"Row has neither OBELICS keys (texts, images) nor MMC4 keys "
                            f"(text_list, image_info); its keys are {sorted(row)}.")


def sample_1fps(data: bytes) -> tuple[list[bytes], list[float]]:
  """An animated image (GIF, WebP, APNG) -> the frames shown at 0, 1, 2... s (JPEG, quality 95) and
  their times; a still or unreadable image -> ([], [])."""
  try:
    im = Image.open(io.BytesIO(data))
    if getattr(im, "n_frames", 1) < 2:
      return [], []
    frames, times, start = [], [], 0.0
    for index in range(im.n_frames):
      im.seek(index)
      end = start + im.info.get("duration", 1000) / 1000
      while len(times) < end and len(times) >= start:  # Whole seconds shown during this frame.
        times.append(float(len(times)))
        frames.append(image_ops.encode_jpeg(np.asarray(im.convert("RGB")), quality=95))
      start = end
    return frames, times
  except (OSError, SyntaxError, ValueError):
    return [], []


def _write_document(writer, source, parts, counts):
  if not parts:
    counts["empty_document"] += 1
    return
  writer.write(records.interleaved(source, parts))
  counts["written"] += 1


def from_jsonl(paths: list[str], out_dir: str, image_root: str | None = None,
               max_shard_bytes: int = 256 << 20) -> dict:
  counts = collections.Counter()
  with records.ShardWriter(out_dir, "interleaved", max_shard_bytes) as writer:
    for path in paths:
      with open(path, encoding="utf-8") as f:
        for n, line in enumerate(tqdm(f, desc=os.path.basename(path), unit="doc")):
          if line.strip():
            row = json.loads(line)
            parts = document_parts(row, image_root, counts)
            _write_document(writer, row.get("url", f"{path}:{n}"), parts, counts)
  return dict(counts)


def from_parquet(paths: list[str], out_dir: str, image_root: str | None = None,
                 max_shard_bytes: int = 256 << 20) -> dict:
  import pyarrow.parquet as pq
  counts = collections.Counter()
  with records.ShardWriter(out_dir, "interleaved", max_shard_bytes) as writer:
    for path in paths:
      table = pq.ParquetFile(path)
      with tqdm(total=table.metadata.num_rows, desc=os.path.basename(path), unit="doc") as bar:
        for batch in table.iter_batches(batch_size=256):
          for n, row in enumerate(batch.to_pylist()):
            parts = document_parts(row, image_root, counts)
            _write_document(writer, row.get("url") or f"{path}:{bar.n + n}", parts, counts)
          bar.update(batch.num_rows)
  return dict(counts)


def from_webdataset(paths: list[str], out_dir: str, max_shard_bytes: int = 256 << 20) -> dict:
  """Pairs go to out_dir/pairs, interleaved documents to out_dir/interleaved (whichever occur)."""
  counts = collections.Counter()
  writers, stack = {}, contextlib.ExitStack()

  def writer(kind):
    if kind not in writers:
      writers[kind] = stack.enter_context(
          records.ShardWriter(os.path.join(out_dir, kind), kind, max_shard_bytes))
    return writers[kind]

  def flush(key, sample):
    image = next((sample[e[1:]] for e in IMAGE_EXTENSIONS if e[1:] in sample), None)
    if "json" in sample and image is None:
      try:
        row = json.loads(sample["json"])
        parts = document_parts(row, None, counts)
      except (ValueError, records.SchemaError):
        counts["unreadable_sample"] += 1
        return
      if parts:
        writer("interleaved").write(records.interleaved(row.get("url", key), parts))
        counts["written_interleaved"] += 1
      else:
        counts["empty_document"] += 1
    elif image is not None and "txt" in sample:
      writer("pairs").write(records.pair(key, image, sample["txt"]))
      counts["written_pairs"] += 1
    else:
      counts["unreadable_sample"] += 1

  with stack:
    for path in paths:
      with tarfile.open(path, "r|*") as tar:
        key, sample = None, {}
        for member in tqdm(tar, desc=os.path.basename(path), unit="file"):
          if not member.isfile():
            continue
          base = os.path.basename(member.name)
          stem, _, ext = base.partition(".")
          sample_key = os.path.join(os.path.dirname(member.name), stem)
          if sample_key != key:
            if key is not None:
              flush(key, sample)
            key, sample = sample_key, {}
          sample[ext.lower()] = tar.extractfile(member).read()
        if key is not None:
          flush(key, sample)
  return dict(counts)


def from_tfds(name: str, split: str, out_dir: str, data_dir: str | None = None,
              image_key: str = "image", caption_key: str = "captions/text",
              max_shard_bytes: int = 256 << 20) -> dict:
  """Pairs from a prepared TFDS dataset; `caption_key` is a feature path ("captions/text" is a
  sequence of captions: one pair each)."""
  import tensorflow_datasets as tfds
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  counts = collections.Counter()
  with records.ShardWriter(out_dir, "pairs", max_shard_bytes) as writer:
    for i in tqdm(range(len(source)), desc=f"{name}/{split}", unit="example"):
      example = source[i]
      captions = example
      for key in caption_key.split("/"):
        captions = captions[key]
      captions = [captions] if isinstance(captions, (str, bytes)) else list(np.asarray(captions))
      image = image_ops.encode_jpeg(np.asarray(example[image_key], np.uint8), quality=95)
      for caption in captions:
        caption = caption if isinstance(caption, bytes) else str(caption).encode("utf-8")
        writer.write(records.pair(f"{name}/{split}/{i}", image, caption))
        counts["written"] += 1
  return dict(counts)


def from_folder(folder: str, out_dir: str, max_shard_bytes: int = 256 << 20) -> dict:
  """Pairs to out_dir/pairs and videos to out_dir/video (whichever occur)."""
  counts = collections.Counter()
  with (records.ShardWriter(os.path.join(out_dir, "pairs"), "pairs", max_shard_bytes) as pairs,
        records.ShardWriter(os.path.join(out_dir, "video"), "video", max_shard_bytes) as videos):
    for entry in tqdm(sorted(os.listdir(folder)), desc=folder, unit="entry"):
      path = os.path.join(folder, entry)
      stem, ext = os.path.splitext(entry)
      if os.path.isdir(path):
        frame_names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        caption_path = os.path.join(path, "caption.txt")
        if not frame_names or not os.path.exists(caption_path):
          counts["incomplete_video"] += 1
          continue
        frames = [_read(os.path.join(path, f)) for f in frame_names]
        caption = _read(caption_path).strip()
        videos.write(records.video(entry, frames, list(range(len(frames))), caption))
        counts["written_video"] += 1
      elif ext.lower() in IMAGE_EXTENSIONS:
        caption_path = os.path.join(folder, stem + ".txt")
        if not os.path.exists(caption_path):
          counts["missing_caption"] += 1
          continue
        image, caption = _read(path), _read(caption_path).strip()
        frames, times = sample_1fps(image)
        if len(frames) > 1:  # An animated GIF / WebP / PNG is a video.
          videos.write(records.video(entry, frames, times, caption))
          counts["written_video"] += 1
        else:
          pairs.write(records.pair(entry, image, caption))
          counts["written_pairs"] += 1
  return dict(counts)


# The non-flag arguments after each source: (fewest, most, what they are).
INPUTS = {"jsonl": (1, None, "one or more .jsonl files"),
          "parquet": (1, None, "one or more .parquet files"),
          "wds": (1, None, "one or more .tar files"),
          "folder": (1, 1, "one FOLDER"),
          "tfds": (0, 0, "no inputs (--name names the dataset)")}
# Flags that apply to some sources only (absl flags are global, not per source).
ONLY_FOR = {"image_root": ("jsonl", "parquet"), "name": ("tfds",), "split": ("tfds",),
            "data_dir": ("tfds",), "image_key": ("tfds",), "caption_key": ("tfds",)}


def source_and_inputs(args: list[str]) -> tuple[str, list[str]]:
  """(source, inputs) of the non-flag arguments; an `app.UsageError` unless they and the flags given
  fit the source."""
  if not args or args[0] not in INPUTS:
    raise app.UsageError(f"give the source first: one of {', '.join(INPUTS)}; got "
                         f"{args[0] if args else 'none'}.")
  source, inputs = args[0], args[1:]
  for name, sources in ONLY_FOR.items():
    if flags.FLAGS[name].present and source not in sources:
      raise app.UsageError(f"--{name} applies to {' and '.join(sources)} only, not {source}.")
  fewest, most, what = INPUTS[source]
  if len(inputs) < fewest or (most is not None and len(inputs) > most):
    raise app.UsageError(f"{source} takes {what}; got {len(inputs)}.")
  if source == "tfds" and flags.FLAGS.name is None:
    raise app.UsageError("tfds needs --name, e.g. --name coco_captions.")
  return source, inputs


def main(argv: list[str]) -> None:
  source, inputs = source_and_inputs(argv[1:])
  f = flags.FLAGS
  shard_bytes = f.max_shard_mb << 20
  if source in ("jsonl", "parquet"):
    read = from_jsonl if source == "jsonl" else from_parquet
    counts = read(inputs, f.out, f.image_root, shard_bytes)
  elif source == "wds":
    counts = from_webdataset(inputs, f.out, shard_bytes)
  elif source == "tfds":
    counts = from_tfds(f.name, f.split, f.out, f.data_dir, f.image_key, f.caption_key, shard_bytes)
  else:
    counts = from_folder(inputs[0], f.out, shard_bytes)
  print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Directory for the shards.", required=True)
  flags.DEFINE_integer("max_shard_mb", 256, "Shard size limit in MB.")
  flags.DEFINE_string("image_root", None, "jsonl / parquet: folder that image file names refer to.")
  flags.DEFINE_string("name", None, "tfds: the dataset, e.g. coco_captions.")
  flags.DEFINE_string("split", "train", "tfds: the split.")
  flags.DEFINE_string("data_dir", None, "tfds: where the prepared dataset is (default: TFDS's).")
  flags.DEFINE_string("image_key", "image", "tfds: the image feature.")
  flags.DEFINE_string("caption_key", "captions/text", "tfds: the caption feature path.")
  app.run(main)
