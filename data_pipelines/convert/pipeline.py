"""A conversion as an Apache Beam pipeline, and the dataset directory it ends in.

  Create(inputs) -> ReadUnits --units--> Reshuffle -> ConvertUnits --<kind>--> WriteToArrayRecord
                           \\--sources (hashes)                    \\--rejects--> WriteToText
                                                                  \\--counts--> CombinePerKey(sum)

Splitting an input into units runs once per input file; the units are then spread over the
workers, which read and check media and encode records. Everything is written into a temporary
directory beside `--out` (manifest.py); the driver lists the shards, writes the manifest, and
renames the directory to `--out`, so a reader sees a whole dataset or none.

The same pipeline runs on Beam's DirectRunner on this machine (`num_workers` processes; 1: in the
driver's process) or on a cluster runner (Dataflow, Flink, Spark) given `runner` and its pipeline
options. array_record's sink writes local files, so on a cluster `--out` must be a file system every
worker mounts (NFS, Lustre, GCS FUSE).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from array_record.beam.arrayrecordio import WriteToArrayRecord

from data_pipelines import manifest, records
from data_pipelines.convert.sources import Converter

_COUNTS, _SOURCES = ".counts", ".sources"  # Driver-side files in the temporary directory.


class ReadUnits(beam.DoFn):
  """An input path -> its units; the path's size and hash to the "sources" output."""

  def __init__(self, converter: Converter):
    self.converter = converter

  def process(self, path: str):
    try:
      yield from self.converter.units(path)
    except OSError as e:
      yield path, None, ("unreadable_file", f"{e.strerror or e}")
    if os.path.isfile(path):
      yield beam.pvalue.TaggedOutput("sources", json.dumps(manifest.source_entry(path)))


class ConvertUnits(beam.DoFn):
  """A unit -> encoded records (to the output of their kind), reject-log lines, (count, n) pairs."""

  def __init__(self, converter: Converter):
    self.converter = converter

  def process(self, unit):
    outcome = self.converter.convert(unit)
    for kind, data in outcome.records:
      yield beam.pvalue.TaggedOutput(kind, data)
    for line in outcome.rejects:
      yield beam.pvalue.TaggedOutput("rejects", json.dumps(line, ensure_ascii=False))
    for key, n in outcome.counts.items():
      yield beam.pvalue.TaggedOutput("counts", (key, n))


@dataclasses.dataclass(frozen=True)
class Runner:
  """Where the pipeline runs: Beam's runner name, DirectRunner worker processes, other options."""
  name: str = "DirectRunner"
  num_workers: int = 1
  options: tuple[str, ...] = ()  # e.g. ("--project=P", "--region=R", "--temp_location=gs://B/t").

  def pipeline_options(self) -> PipelineOptions:
    direct = {}
    if self.name == "DirectRunner":
      mode = "multi_processing" if self.num_workers > 1 else "in_memory"
      direct = dict(direct_num_workers=self.num_workers, direct_running_mode=mode)
    return PipelineOptions(list(self.options), runner=self.name, **direct)


def build(pipeline: beam.Pipeline, converter: Converter, inputs: list[str], tmp_dir: str,
          num_shards: int) -> None:
  """Adds the conversion of `inputs` into `tmp_dir` to `pipeline`."""
  read = (pipeline | "inputs" >> beam.Create(inputs)
          | "split" >> beam.ParDo(ReadUnits(converter)).with_outputs("sources", main="units"))
  converted = (read.units | "spread" >> beam.Reshuffle()
               | "convert" >> beam.ParDo(ConvertUnits(converter)).with_outputs(
                   "rejects", "counts", *records.KINDS))
  for kind in records.KINDS:
    _ = converted[kind] | f"write_{kind}" >> WriteToArrayRecord(
        os.path.join(tmp_dir, kind, kind), file_name_suffix=records.SHARD_SUFFIX,
        num_shards=num_shards)
  _text(converted.rejects, os.path.join(tmp_dir, manifest.REJECTS), "rejects")
  counts = (converted.counts | "sum" >> beam.CombinePerKey(sum)
            | "count_lines" >> beam.MapTuple(lambda key, n: json.dumps([key, n])))
  _text(counts, os.path.join(tmp_dir, _COUNTS), "counts")
  _text(read.sources, os.path.join(tmp_dir, _SOURCES), "sources")


def _text(lines, path: str, label: str) -> None:
  _ = lines | f"write_{label}" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1)


@dataclasses.dataclass
class Summary:
  """What a conversion wrote and left out (outcome.py's count families), and where."""
  out: str  # The dataset directory, or the kept temporary one when the run failed its limits.
  counts: dict[str, int]
  published: bool
  message: str = ""

  def family(self, name: str) -> dict[str, int]:
    return {k.split("/", 1)[1]: v for k, v in sorted(self.counts.items())
            if k.startswith(name + "/")}

  @property
  def reject_fraction(self) -> float:
    written, skipped = sum(self.family("written").values()), sum(self.family("skipped").values())
    return skipped / max(1, written + skipped)

  def as_dict(self) -> dict:
    return {"out": self.out, "published": self.published, "written": self.family("written"),
            "skipped": self.family("skipped"), "dropped": self.family("dropped"),
            "cut": self.family("cut"), "reject_fraction": round(self.reject_fraction, 6),
            "rejects": os.path.join(self.out, manifest.REJECTS)} | (
                {"message": self.message} if self.message else {})


def run(converter: Converter, inputs: list[str], out_dir: str, *, overwrite: bool = False,
        runner: Runner = Runner(), num_shards: int = 0, max_reject_fraction: float = 0.2,
        command: str = "") -> Summary:
  """Converts `inputs` into the dataset directory `out_dir`. It is published unless nothing was
  written or more than `max_reject_fraction` of the units were skipped: then it stays in its
  temporary directory (named in the summary) for inspection and `out_dir` is untouched. Raises
  sources.SourceError or manifest.DatasetError, before any work, when the source cannot be read or
  `out_dir` may not be written."""
  converter.check()
  out_dir = os.path.realpath(out_dir)  # A link to a directory: write the directory it names.
  tmp_dir = manifest.staging(out_dir, overwrite)
  try:
    with beam.Pipeline(options=runner.pipeline_options()) as pipeline:
      build(pipeline, converter, inputs, tmp_dir, num_shards)
    counts = dict(json.loads(line) for line in _read_lines(os.path.join(tmp_dir, _COUNTS)))
    sources = [json.loads(line) for line in _read_lines(os.path.join(tmp_dir, _SOURCES))]
    manifest.write(tmp_dir, _shards(tmp_dir), counts, sources, command)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)  # Ours, made above: nothing of the user's is in it.
    raise
  summary = Summary(tmp_dir, counts, published=False)
  if not summary.family("written"):
    summary.message = f"nothing was written; see {os.path.join(tmp_dir, manifest.REJECTS)}"
  elif summary.reject_fraction > max_reject_fraction:
    summary.message = (f"{summary.reject_fraction:.1%} of the inputs were skipped, more than "
                       f"--max_reject_fraction={max_reject_fraction}; the result is kept at "
                       f"{tmp_dir} (see its {manifest.REJECTS}); {out_dir} is untouched")
  else:
    summary.out, summary.published = manifest.publish(tmp_dir, out_dir, overwrite), True
  return summary


def _read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  os.remove(path)  # A driver-side file this run wrote.
  return lines


def _shards(tmp_dir: str) -> dict[str, list[str]]:
  """{kind: [shard paths relative to tmp_dir]} of the kinds that got records; the empty shards Beam
  writes for kinds with none are removed (this run wrote them)."""
  from array_record.python import array_record_module
  kinds = {}
  for kind in records.KINDS:
    for path in sorted(glob.glob(os.path.join(tmp_dir, kind, "*" + records.SHARD_SUFFIX))):
      reader = array_record_module.ArrayRecordReader(path)
      empty = reader.num_records() == 0
      reader.close()
      if empty:
        os.remove(path)
      else:
        kinds.setdefault(kind, []).append(os.path.relpath(path, tmp_dir))
    if kind not in kinds and os.path.isdir(os.path.join(tmp_dir, kind)):
      os.rmdir(os.path.join(tmp_dir, kind))
  return kinds
