"""Dataset directories (data_pipelines/manifest.py): staging refuses what it must not replace,
publish replaces only our files, the manifest's counts and sizes, and how readers resolve a dataset
path (records.shard_paths) with or without a manifest."""

import json
import os
import shutil

import pytest

from data_pipelines import manifest, records
from tests.data.builders import jpeg, write_shard


def pairs(n: int) -> list[records.Record]:
  return [records.pair(str(i), jpeg(i, (20, 20)), f"caption {i}") for i in range(n)]


def publish(out, sizes: dict[str, int], overwrite=False, prefix="part") -> manifest.Manifest:
  """Writes a dataset of `sizes` ({kind: records}, pairs records whatever the kind) to `out` the
  way a converter does; returns its manifest."""
  tmp = manifest.staging(str(out), overwrite)
  kinds = {}
  for kind, n in sizes.items():
    write_shard(os.path.join(tmp, kind), "pairs", pairs(n), prefix)
    kinds[kind] = [f"{kind}/{prefix}-00000.array_record"]
  manifest.write(tmp, kinds, {"written": sum(sizes.values()), "missing_image": 1}, [], "test")
  return manifest.read(manifest.publish(tmp, str(out), overwrite))


def tree(root) -> set[str]:
  return {os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names}


def test_staging_refuses_a_non_empty_directory_without_overwrite(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("mine")
  with pytest.raises(manifest.DatasetError, match="out is not empty.*--overwrite"):
    manifest.staging(str(tmp_path / "out"), overwrite=False)
  assert os.listdir(tmp_path) == ["out"]


def test_overwrite_refuses_a_directory_that_is_not_our_dataset_and_leaves_it_untouched(tmp_path):
  out = tmp_path / "out"
  (out / "pairs").mkdir(parents=True)
  (out / "pairs" / "notes.txt").write_text("mine")
  with pytest.raises(manifest.DatasetError, match="replaces only a dataset written by.*out is not"):
    manifest.staging(str(out), overwrite=True)
  assert os.listdir(tmp_path) == ["out"] and tree(out) == {"pairs/notes.txt"}
  shutil.rmtree(out / "pairs")  # Empty at staging, somebody's files by publication.
  tmp = manifest.staging(str(out), overwrite=True)
  (out / "notes.txt").write_text("mine")
  with pytest.raises(manifest.DatasetError, match="out is not one"):
    manifest.publish(tmp, str(out), overwrite=True)
  assert tree(out) == {"notes.txt"}


def test_publish_replaces_our_dataset_and_removes_only_listed_files(tmp_path):
  out = tmp_path / "out"
  publish(out, {"pairs": 3}, prefix="old")
  (out / "pairs" / "notes.txt").write_text("mine")
  (out / "mine").mkdir()
  (out / "mine" / "keep.txt").write_text("mine too")
  replaced = publish(out, {"pairs": 2}, overwrite=True, prefix="new")
  assert replaced.records("pairs") == 2
  assert tree(out) == {"manifest.json", "pairs/new-00000.array_record", "pairs/notes.txt",
                       "mine/keep.txt"}
  assert (out / "pairs" / "notes.txt").read_text() == "mine"
  assert os.listdir(tmp_path) == ["out"]  # No staging or replaced directory left beside it.


def test_write_records_counts_records_and_bytes(tmp_path):
  written = publish(tmp_path / "out", {"pairs": 3, "video": 2})
  body = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert body["format"] == manifest.FORMAT and body["command"] == "test"
  assert body["counts"] == {"missing_image": 1, "written": 5}
  assert {k: v["records"] for k, v in body["kinds"].items()} == {"pairs": 3, "video": 2}
  shard = body["kinds"]["pairs"]["shards"][0]
  assert shard == {"path": "pairs/part-00000.array_record", "records": 3,
                   "bytes": os.path.getsize(tmp_path / "out" / shard["path"])}
  assert written.records("video") == 2 and written.counts == body["counts"]


def test_a_shard_changed_on_disk_is_an_error_naming_it(tmp_path):
  publish(tmp_path / "out", {"pairs": 2})
  shard = tmp_path / "out" / "pairs" / "part-00000.array_record"
  with open(shard, "ab") as f:
    f.write(b"more")
  with pytest.raises(manifest.DatasetError, match=f"Shard {shard} has changed.*re-run"):
    records.shard_paths(str(tmp_path / "out"))
  shard.unlink()
  with pytest.raises(manifest.DatasetError, match=f"Shard {shard} .* is missing"):
    records.shard_paths(str(tmp_path / "out"))


def test_a_manifest_never_points_outside_its_directory(tmp_path):
  publish(tmp_path / "out", {"pairs": 1})
  path = tmp_path / "out" / "manifest.json"
  body = json.loads(path.read_text())
  body["kinds"]["pairs"]["shards"][0]["path"] = "../elsewhere.array_record"
  path.write_text(json.dumps(body))
  with pytest.raises(manifest.DatasetError, match="outside the dataset directory"):
    manifest.read(str(tmp_path / "out"))


def test_shard_paths_reads_the_manifest_of_a_dataset_or_of_its_kind(tmp_path):
  one = publish(tmp_path / "one", {"pairs": 2})
  (tmp_path / "one" / "pairs" / "stale-00000.array_record").write_bytes(b"not listed: not read")
  listed = [os.path.join(one.root, "pairs", "part-00000.array_record")]
  assert records.shard_paths(str(tmp_path / "one")) == listed
  assert records.shard_paths(str(tmp_path / "one" / "pairs")) == listed
  two = publish(tmp_path / "two", {"pairs": 2, "video": 1})
  assert records.shard_paths(str(tmp_path / "two" / "video")) == [
      os.path.join(two.root, "video", "part-00000.array_record")]
  with pytest.raises(manifest.DatasetError, match="holds \\['pairs', 'video'\\]; point"):
    records.shard_paths(str(tmp_path / "two"))


def test_shard_paths_globs_a_folder_without_a_manifest(tmp_path):
  write_shard(tmp_path, "pairs", pairs(1), "b")
  write_shard(tmp_path, "pairs", pairs(1), "a")
  expected = [str(tmp_path / f"{p}-00000.array_record") for p in "ab"]
  assert records.shard_paths(str(tmp_path)) == expected
  assert records.shard_paths(str(tmp_path / "*.array_record")) == expected
  assert records.shard_paths(expected[0]) == expected[:1]
