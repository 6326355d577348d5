"""SIGTERM (TPU preemption, `kill`) as a request to save a checkpoint and stop at the next step."""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Turns SIGTERM (TPU preemption, `kill`) into a request to save and stop at the next step.

  Every process calls `should_stop(step)` at the same steps; all of them agree, so a multi-host job
  stops everywhere after the same step.
  """

  def __init__(self):
    self._requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def should_stop(self) -> bool:
    flag = np.array(self._requested)
    if jax.process_count() > 1:
      flag = multihost_utils.process_allgather(flag).any()
    return bool(flag)

  def restore_handler(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)
