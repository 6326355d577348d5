"""The demo corpus builds in well under a minute, with all three kinds in both splits."""

import time

from data_pipelines import demo, records


def test_demo_builds_quickly_with_both_splits_of_every_kind(tmp_path):
  start = time.perf_counter()
  info = demo.build(str(tmp_path))
  assert time.perf_counter() - start < 60
  for split in ("train", "eval"):
    assert set(info[split]) == {"interleaved", "pairs", "video"}
    for kind, path in info[split].items():
      records.check_shards(records.shard_paths(path), kind)

