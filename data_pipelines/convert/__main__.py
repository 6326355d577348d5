r"""Converts web documents, image-text pairs and videos to a dataset directory of ArrayRecord shards.

  python -m data_pipelines.convert jsonl   --out DIR --image_root MEDIA docs-*.jsonl[.gz|.zst]
  python -m data_pipelines.convert parquet --out DIR [--image_root MEDIA] docs-*.parquet
  python -m data_pipelines.convert wds     --out DIR shards-*.tar
  python -m data_pipelines.convert folder  --out DIR FOLDER
  python -m data_pipelines.convert tfds    --out DIR --name coco_captions --split train [--data_dir D]

Row layouts and sources: data_pipelines/convert/rows.py and sources.py. The output (manifest.py) is
DIR/manifest.json, DIR/<kind>/*.array_record and DIR/rejects.jsonl (one line per skipped row,
member or file, and per image dropped from a kept document, with file and line or member). The run
prints a JSON summary (written per kind, skipped / dropped / cut per reason) and exits 0; it exits 1
when nothing was written or more than --max_reject_fraction of the inputs were skipped (the result
then stays in a temporary directory, named, and DIR is untouched) or the file system fails (one
line), and 2 on a usage error (one line for DIR, a tfds dataset that is not there). DIR must
not exist or be empty; --overwrite replaces a dataset this converter wrote, nothing else.

Runs on Apache Beam: DirectRunner on this machine by default (--num_workers processes), or a cluster:

  python -m data_pipelines.convert jsonl --out /mnt/shared/mmc4 --image_root /mnt/shared/images \
      --runner DataflowRunner --pipeline_options="--project=P --region=R \
      --temp_location=gs://B/tmp --extra_packages=dist/flamingo_jax-0.1.0.tar.gz" docs-*.jsonl.zst
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys

from absl import app, flags

from data_pipelines import manifest
from data_pipelines.convert import media, pipeline
from data_pipelines.convert.outcome import printable
from data_pipelines.convert.sources import Converter, SourceError

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
  fit the source and every input exists."""
  if not args or args[0] not in INPUTS:
    raise app.UsageError(f"give the source first: one of {', '.join(INPUTS)}; got "
                         f"{args[0] if args else 'none'}.", 2)
  source, inputs = args[0], args[1:]
  for name, sources in ONLY_FOR.items():
    if flags.FLAGS[name].present and source not in sources:
      raise app.UsageError(f"--{name} applies to {' and '.join(sources)} only, not {source}.", 2)
  fewest, most, what = INPUTS[source]
  if len(inputs) < fewest or (most is not None and len(inputs) > most):
    raise app.UsageError(f"{source} takes {what}; got {len(inputs)}.", 2)
  if source == "tfds" and flags.FLAGS.name is None:
    raise app.UsageError("tfds needs --name, e.g. --name coco_captions.", 2)
  want_dir = source == "folder"
  for path in inputs:
    if printable(path) != path:
      raise app.UsageError(f"input {printable(path)} has a name that is not UTF-8 text; rename "
                           "it.", 2)
    if not (os.path.isdir(path) if want_dir else os.path.isfile(path)):
      kind = "folder" if want_dir else "file"
      raise app.UsageError(f"input {path} is not an existing {kind}.", 2)
  out = os.path.realpath(flags.FLAGS.out)
  for path in inputs + ([flags.FLAGS.image_root] if flags.FLAGS.image_root else []):
    real = os.path.realpath(path)
    if os.path.isdir(real) and os.path.commonpath([out, real]) == real:
      raise app.UsageError(f"--out {out} is inside the input {path}; write it elsewhere.", 2)
  return source, inputs


def converter(source: str) -> Converter:
  f = flags.FLAGS
  limits = media.Limits(image_root=f.image_root, max_pixels=f.max_pixels,
                        max_video_seconds=f.max_video_seconds, max_text_bytes=f.max_text_bytes,
                        max_images=f.max_images, max_file_bytes=f.max_file_mb << 20)
  return Converter(source, limits, tfds_name=f.name, tfds_split=f.split, tfds_data_dir=f.data_dir,
                   image_key=f.image_key, caption_key=f.caption_key)


def main(argv: list[str]) -> None:
  source, inputs = source_and_inputs(argv[1:])
  f = flags.FLAGS
  logging.getLogger("apache_beam").setLevel(logging.WARNING)  # Beam's per-stage INFO lines.
  runner = pipeline.Runner(f.runner, f.num_workers, tuple(shlex.split(f.pipeline_options)))
  try:
    summary = pipeline.run(converter(source), inputs or [f.name], f.out, overwrite=f.overwrite,
                           runner=runner, num_shards=f.num_shards,
                           max_reject_fraction=f.max_reject_fraction, command=shlex.join(sys.argv))
  except (manifest.DatasetError, SourceError) as e:
    print(f"convert: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # The file system refused: permissions, a full disk, a file for a folder.
    print(f"convert: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary.as_dict(), sort_keys=True))
  if not summary.published:
    print(f"convert: {summary.message}", file=sys.stderr)
    sys.exit(1)


def define_flags() -> None:
  flags.DEFINE_string("out", None, "The dataset directory to create (must not exist or be empty).",
                      required=True)
  flags.DEFINE_bool("overwrite", False, "Replace --out if it holds a dataset this converter wrote.")
  flags.DEFINE_string("image_root", None, "jsonl / parquet: folder that media file names are "
                      "relative to; names that lead outside it are refused.")
  flags.DEFINE_integer("max_pixels", media.Limits.max_pixels, "Per image or video frame (w * h).")
  flags.DEFINE_integer("max_video_seconds", media.Limits.max_video_seconds,
                       "Frames kept per video at 1 fps; later seconds are cut (counted).")
  flags.DEFINE_integer("max_text_bytes", media.Limits.max_text_bytes,
                       "Per document; the document ends where its text reaches this (counted).")
  flags.DEFINE_integer("max_images", media.Limits.max_images,
                       "Per document; the document ends before image max_images + 1 (counted).")
  flags.DEFINE_integer("max_file_mb", media.Limits.max_file_bytes >> 20,
                       "A media file or tar member larger than this is skipped (counted).")
  flags.DEFINE_float("max_reject_fraction", 0.2, "Exit 1 without publishing --out if more than this "
                     "fraction of the rows / samples / entries is skipped.")
  flags.DEFINE_integer("num_shards", 0, "Shards per kind; 0: the runner decides.")
  flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner, DataflowRunner, "
                      "FlinkRunner, SparkRunner, ...")
  flags.DEFINE_integer("num_workers", 1, "DirectRunner: worker processes (1: in this process).")
  flags.DEFINE_string("pipeline_options", "", "More Beam pipeline options, as one string.")
  flags.DEFINE_string("name", None, "tfds: the dataset, e.g. coco_captions.")
  flags.DEFINE_string("split", "train", "tfds: the split.")
  flags.DEFINE_string("data_dir", None, "tfds: where the prepared dataset is (default: TFDS's).")
  flags.DEFINE_string("image_key", "image", "tfds: the image feature.")
  flags.DEFINE_string("caption_key", "captions/text", "tfds: the caption feature path.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
