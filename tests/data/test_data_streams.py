"""Grain streams and the mixture: fixed shapes, determinism, per-process sharding, exact resume
(in-process and with 2 worker processes), round-robin, counters, unreadable records (corrupt chunks,
shards truncated after the start) and config errors."""

import json
import logging
import os
import pickle

import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipelines import records, streams
from data_pipelines.mixture import build_mixture
from experiments.flamingo import demo_data
from flamingo_jax.config import DataConfig
from tests.data.builders import jpeg, single, write_shard


def take(mixture, steps):
  return [next(mixture) for _ in range(steps)]


def assert_same(a_steps, b_steps):
  for a, b in zip(a_steps, b_steps, strict=True):
    assert a.keys() == b.keys()
    for name in a:
      for key in a[name]:
        np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}/{key}")


def demo_data_config(root: str, **overrides) -> DataConfig:
  return DataConfig.from_dict(demo_data(root), "data").replace(overrides, "data")


def test_demo_batches_have_the_contract_shapes(demo_corpus, tokenizer):
  assert demo_data_config(demo_corpus[0]).selected().keys() == {"interleaved", "pairs", "video"}
  config = demo_data_config(demo_corpus[0], exclude="")  # Every kind, the naming pages too.
  mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
  step = next(mixture)
  assert set(step) == {"interleaved", "pairs", "video", "naming", "naming_words", "naming_images"}
  for name, batch in step.items():
    d = config.datasets[name]
    b, t, n, f = d.batch_size, d.seq_len, d.max_images, d.num_frames
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "tokens": ((b, t), np.int32), "labels": ((b, t), np.int32),
        "loss_mask": ((b, t), np.float32), "images": ((b, n, f, 32, 32, 3), np.uint8),
        "image_mask": ((b, n), bool), "phi": ((b, t), np.int32)}
    # Every <image> token has a real image slot and padded slots are zeros.
    assert ((batch["tokens"] == tokenizer.image_id).sum(1) == batch["image_mask"].sum(1)).all()
    assert not batch["images"][~batch["image_mask"]].any()
  assert mixture.loss_weights == {"interleaved": 1.0, "pairs": 1.0, "video": 0.03, "naming": 1.0,
                                  "naming_words": 1.0, "naming_images": 1.0}
  assert mixture.counters()["pairs/records"] >= 8


def test_same_seed_same_batches_other_seed_other_batches(demo_corpus, tokenizer):
  config = demo_data_config(demo_corpus[0])
  first = take(build_mixture(config, image_size=32, tokenizer=tokenizer), 2)
  assert_same(first, take(build_mixture(config, image_size=32, tokenizer=tokenizer), 2))
  config = config.replace({"seed": 1})
  other = take(build_mixture(config, image_size=32, tokenizer=tokenizer), 2)
  assert not np.array_equal(first[0]["pairs"]["tokens"], other[0]["pairs"]["tokens"])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_processes_read_disjoint_shares_that_cover_the_data(tmp_path_factory, tokenizer,
                                                            process_count):
  path = str(tmp_path_factory.mktemp("numbered"))
  write_shard(path, "pairs", [records.pair(str(i), jpeg(i, (20, 20)), f"record {i}") for i in range(24)])
  seen = []
  for process in range(process_count):
    config = single("pairs", path, batch_size=2 * process_count)
    mixture = build_mixture(config, image_size=8, tokenizer=tokenizer, process_index=process,
                            process_count=process_count)
    share = []
    for step in take(mixture, 24 // process_count // 2):  # One epoch of this process's share.
      share += [tokenizer.decode(t[2:t.tolist().index(tokenizer.eoc_id)])
                for t in step["pairs"]["tokens"]]
    seen.append(set(share))
    assert len(share) == len(seen[-1]) == 24 // process_count
  assert set().union(*seen) == {f"record {i}" for i in range(24)}
  assert sum(len(s) for s in seen) == 24


def test_resume_in_process_through_an_orbax_json_checkpoint(demo_corpus, tokenizer, tmp_path):
  config = demo_data_config(demo_corpus[0])
  mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
  take(mixture, 3)
  checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
  checkpointer.save(tmp_path / "data_state", args=ocp.args.JsonSave(mixture.get_state()))
  counters = mixture.counters()
  expected = take(mixture, 3)
  restored = build_mixture(config, image_size=32, tokenizer=tokenizer)
  restored.set_state(checkpointer.restore(tmp_path / "data_state", args=ocp.args.JsonRestore()))
  assert restored.counters() == counters
  assert_same(expected, take(restored, 3))
  assert restored.counters() == mixture.counters()


# 8 pairs of 32 tokens packed two to a row, 4 clips two to a row.
_PACKED = {"datasets.pairs.pack": 2, "datasets.pairs.batch_size": 8, "datasets.pairs.seq_len": 32,
           "datasets.video.pack": 2}


def test_packed_batches_have_the_shapes_the_step_is_compiled_for(demo_corpus, tokenizer):
  config = demo_data_config(demo_corpus[0], **_PACKED)
  step = next(build_mixture(config, image_size=32, tokenizer=tokenizer))
  for name, batch in step.items():
    expected = {k: (shape, np.dtype(dtype))
                for k, (shape, dtype) in config.datasets[name].batch_shapes(32).items()}
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected, name
  pairs = step["pairs"]  # 4 rows of two 32-token pairs, each with its own image slot.
  assert pairs["tokens"].shape == (4, 64)
  np.testing.assert_array_equal(pairs["segments"][:, [0, 31, 32, 63]], [[1, 1, 2, 2]] * 4)
  assert set(np.unique(pairs["phi"][:, 32:])) <= {0, 2} and 2 in pairs["phi"][:, 32:]


def test_packed_streams_resume_exactly_and_count_what_they_pack(demo_corpus, tokenizer):
  config = demo_data_config(demo_corpus[0], **_PACKED)
  mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
  take(mixture, 2)
  state = json.loads(json.dumps(mixture.get_state()))
  counters = mixture.counters()
  assert counters["pairs/packed_rows"] == 8 and counters["pairs/packed_examples"] == 16
  assert counters["video/packed_rows"] == 4 and "interleaved/packed_rows" not in counters
  expected = take(mixture, 2)
  restored = build_mixture(config, image_size=32, tokenizer=tokenizer)
  restored.set_state(state)
  assert restored.counters() == counters
  assert_same(expected, take(restored, 2))


def test_resume_with_two_worker_processes(demo_corpus, tokenizer):
  config = demo_data_config(demo_corpus[0], num_workers=2, exclude="pairs,video")
  mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
  take(mixture, 3)
  state = json.loads(json.dumps(mixture.get_state()))
  expected = take(mixture, 3)
  mixture.close()
  restored = build_mixture(config, image_size=32, tokenizer=tokenizer)
  restored.set_state(state)
  assert_same(expected, take(restored, 3))
  restored.close()


def test_round_robin_takes_one_dataset_per_step_and_resumes_in_turn(demo_corpus, tokenizer):
  config = demo_data_config(demo_corpus[0], accumulation="round_robin")
  mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
  assert [list(s) for s in take(mixture, 4)] == [["interleaved"], ["pairs"], ["video"],
                                                 ["interleaved"]]
  state = mixture.get_state()
  restored = build_mixture(config, image_size=32, tokenizer=tokenizer)
  restored.set_state(state)
  assert_same(take(mixture, 2), take(restored, 2))


def test_bad_records_are_counted_and_never_change_the_batch_shape(tmp_path, tokenizer):
  good = lambda i: records.pair(str(i), jpeg(i), f"good {i}")
  recs = [good(0), good(1), records.pair("x", b"", "empty image"), good(3),
          records.pair("y", jpeg(4)[:200], "truncated"), good(5), records.pair("z", jpeg(6), b"\xff"),
          good(7), good(8)]
  write_shard(tmp_path, "pairs", recs)
  mixture = build_mixture(single("pairs", str(tmp_path), batch_size=3), image_size=8,
                          tokenizer=tokenizer, split="eval")
  for step in take(mixture, 2):
    assert step["pairs"]["tokens"].shape == (3, 16) and step["pairs"]["images"].shape == (3, 1, 1, 8, 8, 3)
  counters = {k.split("/")[1]: v for k, v in mixture.counters().items() if v}
  assert counters == {"records": 9, "skipped": 3, "empty_image": 1, "corrupt_image": 1,
                      "non_utf8_text": 1}


def test_a_dataset_of_only_bad_records_is_an_error_not_a_hang(tmp_path, tokenizer, monkeypatch):
  monkeypatch.setattr(streams, "MAX_CONSECUTIVE_SKIPS", 20)
  write_shard(tmp_path, "pairs", [records.pair(str(i), b"", "no image") for i in range(3)])
  mixture = build_mixture(single("pairs", str(tmp_path)), image_size=8, tokenizer=tokenizer)
  with pytest.raises(RuntimeError, match="'pairs'.*in a row.*empty_image"):
    next(mixture)


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=3), "not divisible by the 2 processes"),
    (dict(kind="video"), "kind='video'"),
    (dict(path="/nonexistent/shards"), "/nonexistent/shards"),
    (dict(max_imags=2), "Unknown config field data.datasets.pairs.max_imags"),
    (dict(max_images=2), "data.datasets.pairs.max_images=2: kind=pairs holds one image"),
])
def test_config_errors_name_what_to_change(tmp_path, tokenizer, change, message):
  write_shard(tmp_path, "pairs", [records.pair(str(i), jpeg(i), "c") for i in range(4)])
  config = single("pairs", str(tmp_path))
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    config = config.replace({f"datasets.pairs.{k}": v for k, v in change.items()}, "data")
    build_mixture(config, image_size=8, tokenizer=tokenizer, process_count=2)


def corrupt(shard: str, image: bytes):
  """Flips 16 bytes of the second half of `image` where `shard` stores them as they are, and nowhere
  else (zstd leaves most of a noise JPEG so): that record's chunk then fails array_record's hash
  check, and only it."""
  with open(shard, "r+b") as f:
    data = f.read()
    at = next(data.find(image[k:k + 16]) for k in range(len(image) // 2, len(image) - 16)
              if data.count(image[k:k + 16]) == 1)
    f.seek(at)
    f.write(bytes(b ^ 0xFF for b in data[at:at + 16]))


def captions(batch, tokenizer) -> list[str]:
  return [tokenizer.decode(t[2:t.tolist().index(tokenizer.eoc_id)]) for t in batch["tokens"]]


def test_unreadable_records_are_skipped_counted_once_and_logged(tmp_path, tokenizer, caplog):
  images = [jpeg(i, (20, 20)) for i in range(8)]
  recs = [records.pair(str(i), image, f"record {i}") for i, image in enumerate(images)]
  shard_a = os.path.join(write_shard(tmp_path, "pairs", recs[:4], "a"), "a-00000.array_record")
  shard_b = os.path.join(write_shard(tmp_path, "pairs", recs[4:], "b"), "b-00000.array_record")
  corrupt(shard_a, images[1])
  corrupt(shard_b, images[6])
  mixture = build_mixture(single("pairs", str(tmp_path), batch_size=3), image_size=8,
                          tokenizer=tokenizer, split="eval")
  with caplog.at_level(logging.WARNING):
    seen = [c for step in take(mixture, 2) for c in captions(step["pairs"], tokenizer)]
  assert seen == [f"record {i}" for i in (0, 2, 3, 4, 5, 7)]
  counters = {k.split("/")[1]: v for k, v in mixture.counters().items() if v}
  assert counters == {"records": 8, "skipped": 2, "unreadable_record": 2}
  assert f"Skipping record 1 of shard {shard_a}" in caplog.text
  assert f"Skipping record 2 of shard {shard_b}" in caplog.text


def test_a_run_of_unreadable_records_is_an_error_naming_the_shard(tmp_path, tokenizer, monkeypatch):
  monkeypatch.setattr(streams, "MAX_CONSECUTIVE_SKIPS", 3)
  images = [jpeg(i, (20, 20)) for i in range(5)]
  write_shard(tmp_path, "pairs", [records.pair(str(i), im, "c") for i, im in enumerate(images)])
  shard = str(tmp_path / "pairs-00000.array_record")
  for image in images[1:]:  # The first record stays readable: the shard check passes.
    corrupt(shard, image)
  mixture = build_mixture(single("pairs", str(tmp_path)), image_size=8, tokenizer=tokenizer,
                          split="eval")
  with pytest.raises(RuntimeError, match=f"'unreadable_record': 4.*unreadable shards.*{shard}"):
    next(mixture)


def test_a_shard_truncated_after_the_start_gives_unreadable_records(tmp_path):
  write_shard(tmp_path, "pairs", [records.pair(str(i), jpeg(i, (20, 20)), "c") for i in range(4)])
  shard = str(tmp_path / "pairs-00000.array_record")
  source = streams.ShardSource([shard], [4])
  assert len(source) == 4 and records.decode_record(source[0]).source == "0"
  with open(shard, "r+b") as f:
    f.truncate(2000)
  assert source[3] == records.Unreadable(shard, 3)  # Its open reader reads past the end.
  worker_copy = pickle.loads(pickle.dumps(source))  # A worker process opens the shard anew.
  assert worker_copy[1] == records.Unreadable(shard, 1)
