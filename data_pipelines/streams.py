"""One dataset's grain stream: this process's share of the shards, shuffled, repeated, made into
examples, bad records dropped (counted), batched to fixed shapes, prefetched by worker processes.

  ArrayRecord shards (ShardSource) -> MapDataset[process_index::process_count] -> shuffle(seed)
  -> repeat -> random_map(ToExample) -> to_iter_dataset -> SkipInvalid -> batch(B)
  -> map(pack_rows) -> mp_prefetch(workers)

Every stage is index-based or stateless except SkipInvalid, whose state is its parent's: the
iterator's `get_state()` therefore pins the very next batch (grain checkpointing), with or without
worker processes. Evaluation streams (split != "train") are neither shuffled nor augmented, and repeat
so that every batch has the same shape (the last batch of a pass wraps round to the first records).
A record the shard cannot give (a corrupt chunk, a shard truncated or replaced since the stream
started) is logged with its shard and skipped ("unreadable_record"), not an error that stops the
stream. More than MAX_CONSECUTIVE_SKIPS skipped records in a row stop the stream with an error naming
the dataset, the reasons and the unreadable shards: data that is all bad would otherwise hang the
training step.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import zlib

import grain
import numpy as np
from absl import flags, logging

from data_pipelines import records
from data_pipelines.examples import COUNTERS, ExampleSpec, ToExample
from data_pipelines.packing import pack_rows
from data_pipelines.tokenizer import Tokenizer

MAX_CONSECUTIVE_SKIPS = 1000  # More in a row means the data is broken: an error, not a silent hang.


class _SkipInvalidIterator(grain.DatasetIterator):

  def __init__(self, parent, name: str):
    super().__init__(parent)
    self._name = name

  def __next__(self) -> dict:
    pending, unreadable = 0, set()
    for _ in range(MAX_CONSECUTIVE_SKIPS + 1):
      element = next(self._parent)
      pending = pending + element["counts"]
      if "tokens" in element:
        return element | {"counts": pending}
      if "unreadable" in element:
        unreadable.add(element["unreadable"])
    counts = {c: int(v) for c, v in zip(COUNTERS, pending) if v}
    shards = f"; unreadable shards, rebuild them: {sorted(unreadable)}" if unreadable else ""
    raise RuntimeError(f"Dataset {self._name!r}: {MAX_CONSECUTIVE_SKIPS + 1} records in a row were "
                       f"skipped ({counts}{shards}); check its shards and its config (kind, "
                       "max_pixels).")

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipInvalid(grain.IterDataset):
  """Drops skipped records (`{"counts"}`, + `"unreadable": shard path` for an unreadable one) and
  adds their counts to the next example's."""

  def __init__(self, parent: grain.IterDataset, name: str):
    super().__init__(parent)
    self._name = name

  def __iter__(self) -> _SkipInvalidIterator:
    return _SkipInvalidIterator(self._parent.__iter__(), self._name)


@dataclasses.dataclass(frozen=True)
class _WholeShard:
  """array_record's FileInstruction for all `take` records of a shard: grain maps record indices
  with the counts ShardSource names shards by, and does not reopen the shards to count them."""
  filename: str
  skip: int
  take: int
  examples_in_shard: int


class ShardSource:
  """grain's ArrayRecordDataSource over `paths` (shards holding `counts` records, [S] each) that
  returns a records.Unreadable, logged with the shard and the record's index in it, for a record
  array_record cannot read (or reads as empty: our records never are), instead of raising and
  stopping the stream. Picklable, for grain's worker processes."""

  def __init__(self, paths: list[str], counts: list[int]):
    self._paths = list(paths)
    self._ends = list(itertools.accumulate(counts))  # [S]: one past each shard's last global index.
    self._source = grain.sources.ArrayRecordDataSource(
        [_WholeShard(p, 0, n, n) for p, n in zip(paths, counts)])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> bytes | records.Unreadable:
    try:
      data = self._source[index]
      if data:
        return data
      reason = "it reads as empty: the shard was truncated or replaced"
    except RuntimeError as e:  # array_record's error for a corrupt chunk or an unreadable shard.
      reason = str(e)
    shard = bisect.bisect_right(self._ends, index)
    position = index - (self._ends[shard - 1] if shard else 0)
    logging.warning("Skipping record %d of shard %s (%s); it is counted as unreadable_record. "
                    "Rebuild the shard.", position, self._paths[shard], reason)
    return records.Unreadable(self._paths[shard], position)


def stable_seed(seed: int, name: str) -> int:
  """A per-dataset seed that does not depend on Python's hash randomisation."""
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def build_stream(name: str, spec: ExampleSpec, path: str, *, batch_size: int, tokenizer: Tokenizer,
                 seed: int, process_index: int, process_count: int, num_workers: int,
                 pack: int = 1, row_tokens: int = 0) -> grain.IterDataset:
  """Batches of `batch_size` (this process's) examples: each leaf [B, ...] as in examples.py, plus
  "counts" [B, len(COUNTERS)]; with pack > 1, B / pack rows of `pack` examples and `row_tokens`
  tokens (packing.py)."""
  paths = records.shard_paths(path)
  source = ShardSource(paths, records.check_shards(paths, spec.kind))
  if len(source) < process_count:
    raise ValueError(f"Dataset {name!r} at {path} has {len(source)} records, fewer than the "
                     f"{process_count} processes reading it.")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  seed = stable_seed(seed, name)
  if spec.train:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat().random_map(ToExample(spec, tokenizer), seed=seed)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size))
  ds = SkipInvalid(ds, name).batch(batch_size, drop_remainder=True)
  if pack > 1:
    ds = ds.map(functools.partial(pack_rows, pack=pack, row_tokens=row_tokens))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app (tests,
      flags.FLAGS.mark_as_parsed()  # notebooks) nobody parsed them: take the defaults.
    ds = ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers))
  return ds


def count_totals(batch: dict) -> np.ndarray:
  """Removes "counts" [B, K] from a batch and returns its sum [K]."""
  return batch.pop("counts").sum(axis=0)
