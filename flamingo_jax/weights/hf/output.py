"""The importer's --out directory: never over the checkpoint it reads, never over a directory it did
not write, and complete or absent.

- `check_apart` refuses an --out that is, lies inside, or contains the checkpoint directory or any
  file in it (real paths, so symlinks such as a Hugging Face cache's blobs count where they point).
- `write` builds the tree in a fresh hidden directory beside --out (`.<name>.<random>.tmp`: same
  parent, so the final rename stays on one filesystem) and renames it into place once complete. A
  failure removes that directory and nothing else; --out is untouched.
- What the importer writes carries `MARKER`: JSON naming the writer, the import's settings and every
  path it wrote. An existing --out is replaced only with `overwrite=True`, and only when it is empty
  or its marker lists every path in it: a directory we did not write, or one a user has since added
  files to, is refused and never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

MARKER = "flamingo_jax_import.json"
WRITER = "flamingo_jax.weights.hf.importer"


class OutputError(ValueError):
  """An --out the importer refuses: it overlaps the checkpoint or holds what it did not write."""


def _within(path: str, root: str) -> bool:
  return os.path.commonpath([path, root]) == root


def check_apart(out: str, checkpoint_dir: str) -> None:
  """Raises OutputError when `out` is, lies inside, or contains `checkpoint_dir` or a file in it."""
  out_real = os.path.realpath(out)
  sources = {os.path.realpath(checkpoint_dir)}
  if os.path.isdir(checkpoint_dir):
    sources |= {os.path.realpath(os.path.join(checkpoint_dir, name))
                for name in os.listdir(checkpoint_dir)}
  for source in sorted(sources):
    relation = ("is" if out_real == source else "lies inside" if _within(out_real, source)
                else "contains" if _within(source, out_real) else None)
    if relation:
      raise OutputError(f"--out {out} {relation} {source}, part of the checkpoint being imported; "
                        "choose an --out outside the checkpoint (and the files it links to).")


def _paths(root: str) -> set[str]:
  """Every file, directory and link under `root`, relative to it (links are not followed)."""
  found = set()
  for dirpath, dirnames, filenames in os.walk(root):
    found.update(os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames)
  return found


def _written_paths(out: str) -> set[str]:
  """The paths `out`'s marker says the importer wrote; OutputError when it has no valid marker."""
  try:
    with open(os.path.join(out, MARKER), encoding="utf-8") as f:
      marker = json.load(f)
  except (OSError, ValueError):
    marker = None
  paths = marker.get("paths") if isinstance(marker, dict) else None
  if (marker is None or marker.get("written_by") != WRITER or not isinstance(paths, list)
      or not all(isinstance(p, str) for p in paths)):
    raise OutputError(f"--out {out} was not written by the importer (no valid {MARKER} in it); "
                      "--overwrite replaces only an earlier import. Choose another --out.")
  return set(paths) | {MARKER}


def check_replaceable(out: str, overwrite: bool) -> bool:
  """Whether `out` holds an earlier import to replace (False: absent or an empty directory).
  Raises OutputError for anything else: a file, a non-empty directory without `overwrite`, or one
  holding paths the importer did not write."""
  if not os.path.lexists(out):
    return False
  if not os.path.isdir(out):
    raise OutputError(f"--out {out} exists and is not a directory; choose another --out.")
  found = _paths(out)
  if not found:
    return False
  if not overwrite:
    raise OutputError(f"--out {out} exists and is not empty; pass --overwrite to replace an "
                      "earlier import there, or choose another --out.")
  foreign = sorted(found - _written_paths(out))
  if foreign:
    raise OutputError(f"--out {out} holds {len(foreign)} path(s) the importer did not write, e.g. "
                      f"{foreign[:3]}; move them out, or choose another --out.")
  return True


def _mark(tree: str, settings: dict[str, Any]) -> None:
  paths = sorted(_paths(tree))
  with open(os.path.join(tree, MARKER), "w", encoding="utf-8") as f:
    json.dump({"written_by": WRITER, **settings, "paths": paths}, f, indent=1)


def _move_into_place(tree: str, out: str, staging: str, overwrite: bool) -> None:
  """Renames the finished `tree` to `out`; an earlier import there (checked again now) is first
  moved into `staging`, and moved back if the rename fails."""
  if not check_replaceable(out, overwrite):
    os.rename(tree, out)  # Onto nothing, or onto an empty directory.
    return
  earlier = os.path.join(staging, "earlier")
  os.rename(out, earlier)
  try:
    os.rename(tree, out)
  except OSError:
    os.rename(earlier, out)
    raise


def write(out: str, write_tree: Callable[[str], None], settings: dict[str, Any], *,
          overwrite: bool) -> None:
  """Writes `out` with `write_tree(path)` (which creates `path` and may put siblings beside it),
  marked with `settings`, through a hidden staging directory beside `out`; replaces an earlier
  import there only when `overwrite` (see `check_replaceable`). Raises OutputError before
  writing anything when `out` cannot be written."""
  out = os.path.abspath(out)
  check_replaceable(out, overwrite)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
  try:
    tree = os.path.join(staging, "tree")
    write_tree(tree)
    _mark(tree, settings)
    _move_into_place(tree, out, staging, overwrite)
  finally:
    # Made here, and holding only what the importer wrote: the unfinished tree, or the earlier
    # import just replaced.
    shutil.rmtree(staging)
