"""A dataset directory: shards per kind, a manifest, a reject log; written whole or not at all.

  OUT/manifest.json          what is here (below)
  OUT/<kind>/*.array_record  the shards of each kind present (interleaved, pairs, video)
  OUT/rejects.jsonl          one line per skipped row, member or file: {"reason", "where", "detail"}

manifest.json:

  {"format": "flamingo_jax.dataset/1", "command": "...", "counts": {"written": N, "<reason>": n, ...},
   "kinds": {KIND: {"records": N, "shards": [{"path": "KIND/....array_record", "records": n,
                                             "bytes": b}, ...]}},
   "sources": [{"path": "...", "bytes": b, "sha256": "..."}, ...]}

A converter writes everything into a fresh temporary directory beside OUT (`staging`) and renames it
to OUT when done (`publish`), so a reader never sees a half-written dataset and a crash leaves OUT as
it was. OUT must not exist or be empty; `overwrite=True` replaces a dataset this module wrote (its
manifest says so) and nothing else: the files its manifest lists are removed, never a directory we
did not write, and any other file in it goes back to its place in the new OUT. Readers resolve a
dataset path with `shards` and check each shard's size against the manifest, so a shard changed on
disk is an error naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import uuid

from absl import logging

FORMAT = "flamingo_jax.dataset/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


class DatasetError(ValueError):
  """A dataset directory that cannot be written or read as asked; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Shard:
  path: str  # Relative to the dataset directory.
  records: int
  bytes: int


@dataclasses.dataclass(frozen=True)
class Manifest:
  root: str  # The dataset directory (absolute).
  kinds: dict[str, list[Shard]]
  counts: dict[str, int]
  sources: list[dict]
  command: str

  def records(self, kind: str) -> int:
    return sum(s.records for s in self.kinds[kind])


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def source_entry(path: str) -> dict:
  """{"path", "bytes", "sha256"} of an input file, for the manifest's `sources`."""
  return {"path": os.path.abspath(path), "bytes": os.path.getsize(path),
          "sha256": file_sha256(path)}


def staging(out_dir: str, overwrite: bool) -> str:
  """Checks that OUT may be written (before any work) and creates the temporary directory beside
  it; returns its path."""
  out_dir = os.path.realpath(out_dir)
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise DatasetError(f"--out {out_dir} is a file, not a directory; choose another --out.")
    if os.listdir(out_dir):
      if not overwrite:
        raise DatasetError(f"--out {out_dir} is not empty; choose a new directory, or pass "
                           "--overwrite to replace a dataset written by this converter.")
      _check_ours(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
  os.mkdir(tmp)
  return tmp


def write(tmp_dir: str, kinds: dict[str, list[str]], counts: dict[str, int], sources: list[dict],
          command: str) -> Manifest:
  """Writes tmp_dir/manifest.json for the shards already in tmp_dir. `kinds`: {kind: [shard paths
  relative to tmp_dir]}; `sources`: the input files, as `source_entry` gives them."""
  from array_record.python import array_record_module
  entries = {}
  for kind, paths in sorted(kinds.items()):
    shards = []
    for rel in sorted(paths):
      reader = array_record_module.ArrayRecordReader(os.path.join(tmp_dir, rel))
      shards.append(Shard(rel, reader.num_records(), os.path.getsize(os.path.join(tmp_dir, rel))))
      reader.close()
    entries[kind] = shards
  body = {"format": FORMAT, "command": command, "counts": dict(sorted(counts.items())),
          "kinds": {k: {"records": sum(s.records for s in v),
                        "shards": [dataclasses.asdict(s) for s in v]} for k, v in entries.items()},
          "sources": sorted(sources, key=lambda e: e["path"])}
  with open(os.path.join(tmp_dir, MANIFEST + ".tmp"), "w", encoding="utf-8") as f:
    json.dump(body, f, indent=1)
  os.replace(os.path.join(tmp_dir, MANIFEST + ".tmp"), os.path.join(tmp_dir, MANIFEST))
  return read(tmp_dir)


def publish(tmp_dir: str, out_dir: str, overwrite: bool) -> str:
  """Renames the finished tmp_dir to out_dir; returns out_dir. An existing empty out_dir is
  replaced; an existing dataset (overwrite=True) is moved aside, its listed files removed, and what
  is left (files not ours) moved back to its place in the new out_dir."""
  out_dir = os.path.realpath(out_dir)
  old = None
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise DatasetError(f"--out {out_dir} became non-empty while converting; the result is kept "
                         f"at {tmp_dir}.")
    _check_ours(out_dir)
    old = f"{tmp_dir}.replaced"
    os.rename(out_dir, old)
  elif os.path.isdir(out_dir):
    os.rmdir(out_dir)  # Empty: nothing of anybody's is lost.
  os.rename(tmp_dir, out_dir)
  if old is not None:
    remove_dataset(old)
    if os.path.isdir(old):  # Files not ours were in the old dataset: they stay where they were.
      _put_back(old, out_dir)
  return out_dir


def _check_ours(out_dir: str) -> None:
  """DatasetError unless out_dir holds a dataset this module wrote (the only kind we replace)."""
  try:
    read(out_dir)
  except DatasetError as e:
    raise DatasetError(f"--overwrite replaces only a dataset written by this converter, and "
                       f"{out_dir} is not one ({e}); it is left as it is: choose another "
                       "--out.") from e


def _put_back(old: str, new: str) -> None:
  """Moves what is left in `old` (files and directories that are not ours) to the same place under
  `new`, merging directories; one whose place `new` already uses stays in `old`, logged."""
  for name in sorted(os.listdir(old)):
    source, dest = os.path.join(old, name), os.path.join(new, name)
    if not os.path.lexists(dest):
      os.rename(source, dest)
    elif all(os.path.isdir(p) and not os.path.islink(p) for p in (source, dest)):
      _put_back(source, dest)
    else:
      logging.warning("Kept %s where it is: the new dataset holds %s.", source, dest)
  with contextlib.suppress(OSError):  # Not empty: something could not go back.
    os.rmdir(old)


def remove_dataset(root: str) -> None:
  """Removes the files a manifest lists, the manifest and the reject log, then the directories
  they leave empty; anything else stays (and so does the directory holding it)."""
  manifest = read(root)
  listed = [shard.path for shards in manifest.kinds.values() for shard in shards]
  for name in listed + [REJECTS, MANIFEST]:
    path = os.path.join(root, name)
    if os.path.isfile(path) and not os.path.islink(path):  # Gone, or not what we wrote: left be.
      os.remove(path)
  for directory in [os.path.join(root, kind) for kind in manifest.kinds] + [root]:
    with contextlib.suppress(OSError):  # Not empty: something of somebody else's is in it.
      os.rmdir(directory)


def read(root: str) -> Manifest:
  """The manifest of the dataset directory `root`; DatasetError naming the file if it is missing,
  not ours or malformed."""
  root = os.path.abspath(root)
  path = os.path.join(root, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      body = json.load(f)
    if body.get("format") != FORMAT:
      raise ValueError(f"format is {body.get('format')!r}, not {FORMAT!r}")
    kinds = {kind: [Shard(_inside(s["path"]), int(s["records"]), int(s["bytes"]))
                    for s in entry["shards"]] for kind, entry in body["kinds"].items()}
    return Manifest(root, kinds, dict(body["counts"]), list(body["sources"]), str(body["command"]))
  except FileNotFoundError:
    raise DatasetError(f"{root} has no {MANIFEST}: it is not a dataset written by "
                       "data_pipelines.convert (or data_pipelines.demo).") from None
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DatasetError(f"{path} is not a valid dataset manifest ({e}); re-run the "
                       "converter.") from e


def _inside(rel: str) -> str:
  """`rel` if it names a path inside the dataset directory; ValueError otherwise (a manifest never
  makes us read or remove a file elsewhere)."""
  if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
    raise ValueError(f"shard path {rel!r} is outside the dataset directory")
  return rel


def find(path: str) -> tuple[Manifest, str | None] | None:
  """(manifest, kind) for a dataset directory (kind None) or one of its kind sub-directories; None
  when `path` is neither (a plain folder of shards, a glob or one file)."""
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, MANIFEST)):
    return read(path), None
  parent, kind = os.path.split(path)
  if os.path.isfile(os.path.join(parent, MANIFEST)):
    manifest = read(parent)
    if kind in manifest.kinds:
      return manifest, kind
  return None


def shards(manifest: Manifest, kind: str | None) -> list[str]:
  """The absolute shard paths of `kind` (None: the dataset's only kind), each checked to exist with
  the size the manifest records; DatasetError naming the shard otherwise."""
  if kind is None:
    if len(manifest.kinds) != 1:
      example = os.path.join(manifest.root, min(manifest.kinds))
      raise DatasetError(f"{manifest.root} holds {sorted(manifest.kinds)}; point the dataset at one "
                         f"of its sub-directories, e.g. {example}.")
    kind = next(iter(manifest.kinds))
  paths = []
  for shard in manifest.kinds[kind]:
    path = os.path.join(manifest.root, shard.path)
    if not os.path.isfile(path):
      raise DatasetError(f"Shard {path} listed in {manifest.root}/{MANIFEST} is missing; re-run "
                         "the converter.")
    if (size := os.path.getsize(path)) != shard.bytes:
      raise DatasetError(f"Shard {path} has changed since it was written ({size} bytes, the "
                         f"manifest says {shard.bytes}); re-run the converter.")
    paths.append(path)
  return paths
