"""Running a converter in-process and checking all it wrote against what its corpus expects."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

from array_record.python import array_record_module

from data_pipelines import manifest, records
from data_pipelines.convert import media, pipeline
from data_pipelines.convert.sources import Converter
from tests.data.convert.corpus import Kind


def convert(source: str, inputs: list, out: Path, limits: media.Limits,
            **converter_fields) -> pipeline.Summary:
  """pipeline.run on Beam's DirectRunner in this process, every reject allowed."""
  return pipeline.run(Converter(source, limits, **converter_fields), [str(p) for p in inputs],
                      str(out), max_reject_fraction=1.0)


def read_records(out: Path) -> list[records.Record]:
  """Every record of the dataset directory `out`, through its manifest."""
  found = manifest.read(str(out))
  out = []
  for kind in sorted(found.kinds):
    for path in manifest.shards(found, kind):
      reader = array_record_module.ArrayRecordReader(path)
      out += [records.decode_record(r) for r in reader.read_all()]
      reader.close()
  return out


def read_rejects(out: Path) -> list[dict]:
  with open(os.path.join(out, manifest.REJECTS), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def by_source(recs: list[records.Record]) -> dict[str, records.Record]:
  return {r.source: r for r in recs}


@dataclasses.dataclass
class Expected:
  """What a corpus must give: each written record's (kind, source) once, every count, and one
  reject-log line per skipped input and per dropped part ((counter, where) pairs)."""
  sources: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  rejects: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def written(self, kind: str, source: str) -> None:
    self.sources[(kind, source)] += 1
    self.counts[f"written/{kind}"] += 1

  def counted(self, counter: str, where: str, part: str = "") -> None:
    self.counts[counter] += 1
    if not counter.startswith("cut/"):
      self.rejects[(counter, f"{where} {part}" if part else where)] += 1

  def add(self, kind: Kind, where: str) -> None:
    """A crafted kind at `where` (its file:line, file:row N, file.tar:key...)."""
    for counter, part in kind.expect:
      self.counted(counter, where, part)
    if kind.written:
      self.written(kind.kind, kind.source or where)


def check(summary: pipeline.Summary, out: Path, expected: Expected) -> list[records.Record]:
  """Asserts that the published dataset at `out` holds exactly the expected records, counts and
  reject-log lines; returns its records."""
  assert summary.published and summary.out == os.path.abspath(out), summary.message
  recs = read_records(out)
  assert collections.Counter((r.kind, r.source) for r in recs) == expected.sources
  assert summary.counts == dict(expected.counts)
  assert manifest.read(str(out)).counts == summary.counts
  logged = collections.Counter(
      (f"{family}/{line[family]}", line["where"]) for line in read_rejects(out)
      for family in ("skipped", "dropped") if family in line)
  assert logged == expected.rejects
  return recs
