"""One dataset's grain stream: this process's share of the shards, shuffled, repeated, made into
examples, bad records dropped (counted), batched to fixed shapes, prefetched by worker processes.

  ArrayRecord shards -> MapDataset[process_index::process_count] -> shuffle(seed) -> repeat
  -> random_map(ToExample) -> to_iter_dataset -> SkipInvalid -> batch(B) -> map(pack_rows)
  -> mp_prefetch(workers)

Every stage is index-based or stateless except SkipInvalid, whose state is its parent's: the
iterator's `get_state()` therefore pins the very next batch (grain checkpointing), with or without
worker processes. Evaluation streams (split != "train") are neither shuffled nor augmented, and repeat
so that every batch has the same shape (the last batch of a pass wraps round to the first records).
More than MAX_CONSECUTIVE_SKIPS skipped records in a row stop the stream with an error naming the
dataset and the reasons: data that is all bad would otherwise hang the training step.
"""

from __future__ import annotations

import functools
import zlib

import grain
import numpy as np
from absl import flags

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
    pending = 0
    for _ in range(MAX_CONSECUTIVE_SKIPS + 1):
      element = next(self._parent)
      pending = pending + element["counts"]
      if "tokens" in element:
        return element | {"counts": pending}
    counts = {c: int(v) for c, v in zip(COUNTERS, pending) if v}
    raise RuntimeError(f"Dataset {self._name!r}: {MAX_CONSECUTIVE_SKIPS + 1} records in a row were "
                       f"skipped ({counts}); check its shards and its config (kind, max_pixels).")

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipInvalid(grain.IterDataset):
  """Drops skipped records (`{"counts"}` alone) and adds their counts to the next example's."""

  def __init__(self, parent: grain.IterDataset, name: str):
    super().__init__(parent)
    self._name = name

  def __iter__(self) -> _SkipInvalidIterator:
    return _SkipInvalidIterator(self._parent.__iter__(), self._name)


def stable_seed(seed: int, name: str) -> int:
  """A per-dataset seed that does not depend on Python's hash randomisation."""
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def build_stream(name: str, spec: ExampleSpec, path: str, *, batch_size: int, tokenizer: Tokenizer,
                 seed: int, process_index: int, process_count: int, num_workers: int,
                 pack: int = 1) -> grain.IterDataset:
  """Batches of `batch_size` (this process's) examples: each leaf [B, ...] as in examples.py, plus
  "counts" [B, len(COUNTERS)]; with pack > 1, B / pack rows of `pack` examples (packing.py)."""
  paths = records.shard_paths(path)
  records.check_shards(paths, spec.kind)
  source = grain.sources.ArrayRecordDataSource(paths)
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
    ds = ds.map(functools.partial(pack_rows, pack=pack))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app (tests,
      flags.FLAGS.mark_as_parsed()  # notebooks) nobody parsed them: take the defaults.
    ds = ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers))
  return ds


def count_totals(batch: dict) -> np.ndarray:
  """Removes "counts" [B, K] from a batch and returns its sum [K]."""
  return batch.pop("counts").sum(axis=0)
