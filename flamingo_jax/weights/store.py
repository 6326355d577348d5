"""Parameter trees on disk (orbax): standalone trees (towers, exports, imports) and a run's checkpoints.

A training checkpoint holds what cannot be recomputed: the train state (step, trainable params,
optimiser state, RNG) and the data iterator's position (JSON). Frozen weights are *referenced*, not
rewritten: they are reloaded from their source (the config's `init.*` checkpoints, or the seed) on
every start. Saves are asynchronous; orbax writes each step into a temporary directory and renames it
only once complete, so a save cut short by a crash is never listed as a step and resume falls back to
the previous one.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any, Iterable

import orbax.checkpoint as ocp
from orbax.checkpoint.experimental import v1 as ocp_v1


class Checkpointer:
  """Train-state + data-state checkpoints in `<workdir>/checkpoints/<step>`."""

  def __init__(self, workdir: str, *, keep: int, keep_every: int = 0):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, enable_async_checkpointing=True,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with shardings), which may
    come from a different mesh than the one that saved."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_trainable(self, step: int, abstract_trainable: Any) -> Any:
    """Only the trainable tree of the train state at `step`, onto the shardings of
    `abstract_trainable` (no optimiser state is read, so no optimiser needs to be built)."""
    item = {"trainable": abstract_trainable}
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"]["trainable"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


# The file orbax writes into every checkpoint directory: what marks a tree `save_params` may replace.
_ORBAX_METADATA = "_CHECKPOINT_METADATA"


def _replaceable(path: str) -> bool:
  """Whether `save_params` may write over `path`: absent, an empty directory or an orbax checkpoint."""
  if not os.path.lexists(path):
    return True
  return os.path.isdir(path) and (not os.listdir(path) or
                                  os.path.isfile(os.path.join(path, _ORBAX_METADATA)))


def save_params(path: str, params: Any) -> None:
  """Writes a parameter tree (e.g. a pretrained tower) as a standalone orbax checkpoint, replacing
  an earlier orbax checkpoint at `path` (a re-run's export); anything else there is a ValueError,
  never deleted."""
  path = os.path.abspath(path)
  if not _replaceable(path):
    raise ValueError(f"{path} exists and is not an orbax checkpoint (no {_ORBAX_METADATA}); move "
                     "it away (it is never deleted) or write elsewhere.")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params, force=True)


# Where orbax's partial saves (`save_params_in_batches`) put the tree inside the checkpoint directory.
_BATCHED_TREE = "state"


def save_params_in_batches(path: str, batches: Iterable[Any]) -> None:
  """Writes one parameter tree given as disjoint subtrees (nested dicts of numpy arrays, produced
  one after the other) with orbax's partial saves: memory holds one subtree and its write buffers,
  not the whole tree (the weight importer's peak). `load_params` reads the result like `save_params`'.
  `path` must not exist (FileExistsError); orbax builds the tree beside it (`<path>.partial_save`)
  and renames it to `path` when complete."""
  path = os.path.abspath(path)
  if os.path.lexists(path):
    raise FileExistsError(f"{path} exists; save_params_in_batches writes a new directory only.")
  for batch in batches:
    ocp_v1.partial.save(path, batch)
    del batch  # Freed before the next one is made.
    _return_freed_memory()
  ocp_v1.partial.finalize(path)


def _return_freed_memory() -> None:
  """Hands glibc's freed blocks back to the OS (`malloc_trim`). The write buffers of a batch are freed
  in tensorstore's threads' arenas, which the main thread's next batch would not reuse: untrimmed,
  they add ~0.3x of a 207 MB import to its peak. Does nothing without glibc."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def load_params(path: str, abstract_params: Any) -> Any:
  """Reads a tree written by `save_params` or `save_params_in_batches` onto the shardings and dtypes
  of `abstract_params`; a tree of another structure or shape is an error naming the path."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, _BATCHED_TREE)):
    path = os.path.join(path, _BATCHED_TREE)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path, abstract_params)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f"Cannot load parameters from {path}: {e}. Check that it was written for this "
                     "model config (shapes and layer plan).") from e


RUN_RECORD = "run.json"  # In a run's workdir: its whole resolved config and its towers.


def write_run_record(workdir: str, record: dict) -> None:
  """Writes `<workdir>/run.json` (JSON: {"config": ..., "towers": ...}) through a temporary file
  and a rename, so a reader never sees half a record."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, RUN_RECORD)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def read_run_record(workdir: str) -> dict | None:
  """`<workdir>/run.json` parsed, or None when the workdir has no record."""
  path = os.path.join(workdir, RUN_RECORD)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
