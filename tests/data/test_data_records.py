"""Record schema, shard writer (size sharding, atomic publication) and the shard checks (files that
are not shards, empty shards, record counts)."""

import os

import pytest
from array_record.python import array_record_module

from data_pipelines import records
from tests.data.builders import jpeg, write_shard


def test_round_trip_keeps_parts_in_order():
  record = records.video("clip/1", [jpeg(1), jpeg(2)], [0.0, 1.0], "a dog runs")
  back = records.decode_record(records.encode_record(record))
  assert back == record
  doc = records.interleaved("page", [("text", b"hi"), ("image", jpeg(3)), ("text", b"\xff")])
  assert records.decode_record(records.encode_record(doc)) == doc


@pytest.mark.parametrize("data, message", [
    (b"PK\x03\x04" + b"\0" * 20, "does not start with"),
    (records.MAGIC + b"\x05\x00\x00\x00nojsn", "header"),
    (records.encode_record(records.pair("p", b"abc", "cap")) + b"extra", "payload"),
    (records.MAGIC + b"\x01", "shorter"),
    (records.encode_record(records.pair("p", b"abc", "cap")).replace(b'"image"', b'"audio"'), "audio"),
])
def test_decode_rejects_records_off_schema(data, message):
  with pytest.raises(records.SchemaError, match=message):
    records.decode_record(data)


def test_writer_shards_by_size(tmp_path):
  with records.ShardWriter(str(tmp_path), "pairs", max_shard_bytes=3000) as writer:
    for i in range(10):
      writer.write(records.pair(str(i), jpeg(i), f"caption {i}"))
  paths = records.shard_paths(str(tmp_path))
  assert len(paths) > 1 and paths == writer.paths
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
  total = 0
  for path in paths:
    reader = array_record_module.ArrayRecordReader(path)
    total += reader.num_records()
    reader.close()
  assert total == 10


def test_writer_crash_publishes_no_partial_shard(tmp_path):
  with pytest.raises(RuntimeError):
    with records.ShardWriter(str(tmp_path), "pairs", max_shard_bytes=3000) as writer:
      for i in range(10):
        writer.write(records.pair(str(i), jpeg(i), "c"))
        if i == 5:
          raise RuntimeError("converter crashed")
  names = os.listdir(tmp_path)
  assert not [n for n in names if n.endswith(".tmp")]
  for path in records.shard_paths(str(tmp_path)):  # Only complete shards, each readable in full.
    reader = array_record_module.ArrayRecordReader(path)
    assert all(records.decode_record(r) for r in reader.read_all())
    reader.close()
  assert len(names) == len(writer.paths) < 10


def test_missing_shards_error_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    records.shard_paths(str(tmp_path / "nowhere" / "*.array_record"))


def test_kind_mismatch_error_names_the_file(tmp_path):
  write_shard(tmp_path, "pairs", [records.pair("p", jpeg(), "c")])
  paths = records.shard_paths(str(tmp_path))
  with pytest.raises(records.SchemaError, match="pairs-00000.array_record.*kind='video'"):
    records.check_shards(paths, "video")


def test_foreign_shard_error_names_the_file(tmp_path):
  path = str(tmp_path / "foreign-00000.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  writer.write(b'{"not": "ours"}')
  writer.close()
  with pytest.raises(records.SchemaError, match="foreign-00000.array_record"):
    records.check_shards([path], "pairs")



def text_file(directory) -> str:
  path = directory / "notes-00000.array_record"
  path.write_text("hello")
  return str(path)


def truncated_shard(directory) -> str:
  path = os.path.join(write_shard(directory, "pairs", [records.pair("p", jpeg(), "c")]),
                      "pairs-00000.array_record")
  with open(path, "r+b") as f:
    f.truncate(5000)
  return path


@pytest.mark.parametrize("make", [text_file, truncated_shard])
def test_a_file_that_is_not_a_shard_is_an_error_naming_it(tmp_path, make):
  path = make(tmp_path)
  with pytest.raises(ValueError, match=f"{path} is not a readable ArrayRecord shard.*rebuild it"):
    records.check_shards([path], "pairs")


def test_an_empty_shard_is_an_error_naming_it(tmp_path):
  path = str(tmp_path / "empty-00000.array_record")
  array_record_module.ArrayRecordWriter(path, "group_size:1").close()
  with pytest.raises(ValueError, match="empty-00000.array_record holds no records"):
    records.check_shards([path], "pairs")


def test_check_shards_counts_the_records_of_each_shard(tmp_path):
  write_shard(tmp_path, "pairs", [records.pair(str(i), jpeg(i), "c") for i in range(3)], "a")
  write_shard(tmp_path, "pairs", [records.pair(str(i), jpeg(i), "c") for i in range(2)], "b")
  assert records.check_shards(records.shard_paths(str(tmp_path)), "pairs") == [3, 2]
