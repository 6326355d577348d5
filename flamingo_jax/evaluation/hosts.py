"""Evaluation over several processes (one per host, `sharding.initialize_processes`): the processes
are data-parallel replicas of the model, each on its own mesh of its local devices.

Rows (a task's queries; the examples whose RICES features are computed) are cut into the batches one
process would run (`batch_size` rows each, the last one short), and process p runs the contiguous
batches [p n, (p + 1) n), n = ceil(#batches / #processes) (`share`). Every batch a process runs is
one that a single process runs (same rows, same padding, same shapes), so on equal meshes each row's
outputs are bit for bit those of a one-process run. `gather` brings every process's rows to every
process in row order; arrays travel as raw bytes (a jax array would narrow float64 and int64 to 32
bits), so nothing is rounded on the way. `from_first` sends process 0's array to the others (what
it read from a disk only it may see). With one process nothing is sent.
"""

from __future__ import annotations

import io
import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def _rows_per_process(num_rows: int, batch_size: int) -> int:
  num_batches = -(-num_rows // batch_size)
  return -(-num_batches // jax.process_count()) * batch_size


def share(num_rows: int, batch_size: int) -> range:
  """This process's rows of `num_rows` rows cut into batches of `batch_size` (the module docstring's
  split; empty for a process past the last batch)."""
  per_process = _rows_per_process(num_rows, batch_size)
  start = min(jax.process_index() * per_process, num_rows)
  return range(start, min(start + per_process, num_rows))


def gather(local: Any, num_rows: int, batch_size: int) -> Any:
  """A tree of arrays [len(share), ...] of this process's rows (the same trailing shapes and dtypes
  in every process) -> the same tree of [num_rows, ...] arrays of every process's rows, in order,
  on every process."""
  if jax.process_count() == 1:
    return local
  per_process = _rows_per_process(num_rows, batch_size)

  def gather_leaf(x):
    x = np.ascontiguousarray(x)
    row_bytes = x.itemsize * math.prod(x.shape[1:])
    sent = np.zeros((per_process, row_bytes), np.uint8)  # Rows past the share: zeros, cut below.
    sent[:len(x)] = x.reshape(len(x), math.prod(x.shape[1:])).view(np.uint8)
    every = multihost_utils.process_allgather(sent).reshape(-1, row_bytes)[:num_rows]
    return np.ascontiguousarray(every).view(x.dtype).reshape(num_rows, *x.shape[1:])

  return jax.tree.map(gather_leaf, local)


def from_first(array: np.ndarray | None) -> np.ndarray | None:
  """Process 0's `array` (or its None) on every process; the other processes' `array` is ignored."""
  if jax.process_count() == 1:
    return array
  buffer = io.BytesIO()
  if jax.process_index() == 0 and array is not None:
    np.save(buffer, array, allow_pickle=False)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(buffer.getbuffer().nbytes)))
  if not size:
    return None
  sent = (np.frombuffer(buffer.getvalue(), np.uint8) if jax.process_index() == 0
          else np.zeros(size, np.uint8))
  received = np.asarray(multihost_utils.broadcast_one_to_all(sent), np.uint8)
  return np.load(io.BytesIO(received.tobytes()), allow_pickle=False)
