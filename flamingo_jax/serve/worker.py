"""The thread that owns the engine (the only one that touches the device).

Its loop: admit waiting jobs into free rows, first come first served, all that fit in one engine
call (one batched prefill; a /score job runs whole when its turn comes: scoring is not batched); one
engine step; answer the requests that ended. It sleeps
while there is nothing to do. Answers go back to the event loop that asked
(`loop.call_soon_threadsafe`). A job whose client gave up (timeout) is skipped, or its row freed. An
error in one job (its checks, its scoring) fails that job alone; an error in an admission or a step
fails the requests being admitted and those in the rows and rebuilds the engine's state; the loop
goes on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading

from absl import logging

from flamingo_jax.inference.engine import Admission, Engine
from flamingo_jax.serve.inputs import Prompt, RequestError


@dataclasses.dataclass(eq=False)  # Compared by identity: it is its own handle in the engine.
class Job:
  """A /generate request (candidates None) or a /score request, and where its answer goes: a
  `Finished`, an array of scores, or a RequestError."""
  prompt: Prompt
  max_new_tokens: int
  candidates: list[list[int]] | None
  loop: asyncio.AbstractEventLoop
  future: asyncio.Future
  given_up: bool = False  # Set by the client's side (timeout): drop the job.


class Worker:
  """Runs `engine` on its own thread; `submit` queues a job (at most max_waiting wait)."""

  def __init__(self, engine: Engine, max_waiting: int):
    self.engine, self.max_waiting = engine, max_waiting
    self._waiting: collections.deque[Job] = collections.deque()
    self._wake = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

  @property
  def waiting(self) -> int:
    return len(self._waiting)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Ends the loop after its current step; waiting jobs get a 503."""
    with self._wake:
      self._stopping = True
      self._wake.notify()
    self._thread.join()
    while self._waiting:
      _answer(self._waiting.popleft(), RequestError(503, "shutting_down", "the server is stopping."))

  def submit(self, job: Job) -> None:
    with self._wake:
      if len(self._waiting) >= self.max_waiting:
        raise RequestError(503, "busy", f"{len(self._waiting)} requests are waiting, "
                           f"serve.max_waiting={self.max_waiting}; retry later.")
      self._waiting.append(job)
      self._wake.notify()

  def _loop(self) -> None:
    while self._admit():
      for job in self.engine.handles:
        if job.given_up:
          self.engine.cancel(job)
      try:
        finished = self.engine.step()
      except Exception as e:
        self._fail_rows(e, "engine step failed")
        continue
      for done in finished:
        _answer(done.handle, done)

  def _admit(self) -> bool:
    """Starts waiting jobs while rows are free; blocks while there is nothing to do. False once
    stopping."""
    with self._wake:
      while not (self._stopping or self._waiting or self.engine.handles):
        self._wake.wait()
      if self._stopping:
        return False
    while self.engine.free and self._waiting:  # Those that arrived during an admission next.
      self._start(self._take_jobs())
    return True

  def _take_jobs(self) -> list[Job]:
    """The waiting /generate jobs that fit the free rows (each passing `Engine.check`); /score jobs
    met on the way run whole, bad or abandoned jobs are answered or dropped."""
    jobs = []
    while self.engine.free > len(jobs):
      with self._wake:
        if not self._waiting:
          break
        job = self._waiting.popleft()
      if job.given_up:
        continue
      try:
        if job.candidates is not None:
          _answer(job, self.engine.score(job.prompt.tokens, job.prompt.images, job.candidates))
        else:
          self.engine.check(_admission(job))
          jobs.append(job)
      except Exception as e:
        logging.exception("request failed")
        _answer(job, _internal(e))
    return jobs

  def _start(self, jobs: list[Job]) -> None:
    """Admits /generate jobs (each passed `Engine.check`) together."""
    if not jobs:
      return
    try:
      for done in self.engine.admit([_admission(job) for job in jobs]):
        _answer(done.handle, done)
    except Exception as e:
      self._fail_rows(e, "admission failed", jobs)

  def _fail_rows(self, error: Exception, what: str, jobs: list[Job] = ()) -> None:
    """After a failed engine call the rows' state is unknown: fails `jobs` and the requests in the
    rows, and starts afresh."""
    logging.exception(what)
    for job in {*jobs, *self.engine.handles}:
      _answer(job, _internal(error))
    self.engine.reset()


def _admission(job: Job) -> Admission:
  return Admission(job, job.prompt.tokens, job.prompt.images, job.max_new_tokens)


def _internal(error: Exception) -> RequestError:
  return RequestError(500, "internal_error", f"{type(error).__name__}: {error}")


def _answer(job: Job, value) -> None:
  """Resolves the job's future on its own event loop (unless its client has gone)."""
  def settle():
    if not job.future.done():
      if isinstance(value, Exception):
        job.future.set_exception(value)
      else:
        job.future.set_result(value)
  try:
    job.loop.call_soon_threadsafe(settle)
  except RuntimeError:  # The loop is closed: nobody waits for the answer.
    pass
