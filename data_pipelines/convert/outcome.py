"""What converting one unit (a row, a tar sample, a folder entry) gives: records, counts, rejects.

Counts are keyed `family/name`:
  written/<kind>   records written (interleaved, pairs, video)
  skipped/<reason> rows, members or files left out whole (each also a line in the reject log)
  dropped/<reason> parts left out of a kept document: an image or a sentence (also logged)
  cut/<cap>        kept documents cut at a per-document cap (max_text_bytes, max_images,
                   max_video_seconds)
"""

from __future__ import annotations

import collections
import dataclasses

from data_pipelines import records


def printable(text: str) -> str:
  """`text` as valid UTF-8: a file or tar member name's undecodable bytes (os and tarfile hand them
  over as surrogate escapes, which Beam's coders and the reject log cannot encode) become \\xNN."""
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    try:
      return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # Other lone surrogates.
      return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Reject(Exception):
  """A row, member, file or part that is left out; `reason` is its counter name."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


@dataclasses.dataclass
class Outcome:
  """The records one unit became, and what was left out of it, with where."""
  where: str  # "file:line", "file.tar:key", "folder/entry", "name/split:index".
  records: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # (kind, encoded).
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  rejects: list[dict] = dataclasses.field(default_factory=list)  # Reject-log lines.

  def write(self, record: records.Record) -> None:
    record = dataclasses.replace(record, source=printable(record.source))  # A url, name or key.
    self.records.append((record.kind, records.encode_record(record)))
    self.counts[f"written/{record.kind}"] += 1

  def skip(self, reject: Reject) -> None:
    self._log("skipped", reject, self.where)

  def drop(self, reject: Reject, part: str) -> None:
    self._log("dropped", reject, f"{self.where} {part}")

  def cut(self, cap: str) -> None:
    self.counts[f"cut/{cap}"] += 1

  def _log(self, family: str, reject: Reject, where: str) -> None:
    self.counts[f"{family}/{reject.reason}"] += 1
    self.rejects.append({family: reject.reason, "where": printable(where),
                         "detail": printable(reject.detail[:500])})
