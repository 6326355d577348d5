"""The parquet converter on one run over a mixed corpus. Parquet columns are typed, so each shared
row kind (corpus.row_kinds) that a table can hold faithfully goes in a file of its own, between two
good rows of its layout when their types agree (else alone); kinds it cannot hold (raw lines,
top-level non-objects, lists mixing types, lone surrogates) are left out and counted in the test.
Files of Parquet's own problems come on top: not Parquet, empty, truncated, a corrupt row group,
binary text columns, image bytes, Hugging Face image structs."""

import collections
import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.convert import corpus
from tests.data.convert.check import Expected, by_source, check, convert, read_records
from tests.data.convert.corpus import OK, Kind, drop, skip

NUM_GOOD_FILES = 6


def normal(value, top: bool = True):
  """A row as rows.py sees it: inside the row a null field is the same as no field (Parquet gives
  every struct all the fields of its column)."""
  if isinstance(value, dict):
    return {k: normal(v, False) for k, v in value.items() if top or v is not None}
  if isinstance(value, list):
    return [normal(v, False) for v in value]
  return value


def text(rows: list) -> str:
  return json.dumps(normal(rows), sort_keys=True, default=repr)


def faithful(rows: list) -> pa.Table | None:
  """rows as a table, if Parquet gives them back as rows.py would see them; else None."""
  try:
    table = pa.Table.from_pylist(rows)
  except (pa.ArrowException, TypeError, ValueError, UnicodeError, OverflowError):
    return None
  same = text(table.to_pylist()) == text(rows)
  return table if same and table.num_columns else None


class Goods:
  """Good rows with unique urls, made to order by key set (a layout)."""

  def __init__(self):
    self.made = collections.Counter()
    self.templates = {frozenset(r): r for r in corpus.good_rows(6)}

  def two(self, keys: frozenset) -> list[dict] | None:
    template = self.templates.get(keys)
    if template is None:
      return None
    self.made[keys] += 2
    return [template | {"url": f"pq-good-{len(self.made)}-{self.made[keys] - i}"} for i in (1, 0)]


def shared_files(tmp, kinds: list[Kind], expected: Expected) -> list[Kind]:
  """A file per kind Parquet can hold (with good neighbours when it can); returns the others."""
  goods, left_out = Goods(), []
  for i, kind in enumerate(kinds):
    path = tmp / f"{i:03d}-{kind.name}.parquet"
    neighbours = goods.two(frozenset(kind.row)) if isinstance(kind.row, dict) else None
    if neighbours and (table := faithful([neighbours[0], kind.row, neighbours[1]])):
      pq.write_table(table, path)
      expected.add(kind, f"{path}:row 1")
      for row in neighbours:
        expected.written(corpus.record_kind(row), row["url"])
    elif isinstance(kind.row, dict) and (table := faithful([kind.row])):
      pq.write_table(table, path)
      expected.add(kind, f"{path}:row 0")
    else:
      left_out.append(kind)
  return left_out


def own_kinds() -> list[Kind]:
  """Rows only Parquet holds: bytes in binary columns, Hugging Face {"bytes", "path"} images."""
  def with_image(name: str, value, reason: str) -> Kind:
    return Kind(name, {"texts": ["intro", None, "middle", None], "images": [None, OK, None, value]},
                drop(reason, "images[3]"))

  return [
      Kind("binary_text_not_utf8", {"texts": [b"\xff\xfe", None], "images": [None, OK]},
           skip("invalid_utf8")),
      with_image("image_bytes_corrupt", corpus.CORRUPT, "corrupt_image"),
      with_image("image_bytes_empty", b"", "empty_image"),
      with_image("image_bytes_gif_bomb", corpus.GIF_BOMB, "enormous_image"),
      with_image("image_bytes_over_max_pixels", corpus.HUGE_JPEG, "enormous_image"),
      Kind("hf_image_without_bytes", {
          "texts": ["intro", None, "middle", None],
          "images": [None, {"bytes": OK, "path": "a.jpg"}, None, {"bytes": None, "path": "b.jpg"}]},
           drop("wrong_type", "images[3]")),
      Kind("pair_bytes_corrupt", {"image": corpus.CORRUPT, "caption": "a"}, skip("corrupt_image")),
      Kind("video_bytes_corrupt", {"video": corpus.CORRUPT, "caption": "a"}, skip("corrupt_video")),
      Kind("video_bytes_still", {"video": OK, "caption": "a"}, skip("no_frames")),
      # Good: written, nothing counted.
      Kind("binary_text", {"texts": [b"binary text", None], "images": [None, OK]}),
      Kind("image_bytes", {"texts": ["hello", None, "bye"], "images": [None, OK, None]}),
      Kind("video_bytes", {"video": corpus.mp4(), "caption": "a video in a cell"}),
  ]


def file_kinds(tmp, expected: Expected) -> None:
  """Files that are not (whole) Parquet, and one with a corrupt second row group."""
  table = pa.Table.from_pylist(corpus.good_rows(1, "pq-file"))
  pq.write_table(table, tmp / "whole.parquet")
  whole = (tmp / "whole.parquet").read_bytes()
  for name, data in [("not-parquet.parquet", b"PAR1 this is not parquet " * 10),
                     ("empty.parquet", b""), ("truncated.parquet", whole[:len(whole) // 2])]:
    (tmp / name).write_bytes(data)
    expected.counted("skipped/unreadable_file", str(tmp / name))
  (tmp / "whole.parquet").unlink()
  rows = [{"url": f"pq-group-{i}", "image": "ok.jpg", "caption": f"caption {i}"} for i in range(4)]
  path = tmp / "corrupt-group.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2, compression="none")
  column = pq.ParquetFile(path).metadata.row_group(1).column(2)  # caption, group 1.
  data = bytearray(path.read_bytes())
  data[column.data_page_offset:column.data_page_offset + 16] = b"\xff" * 16  # Its page header.
  path.write_bytes(bytes(data))
  for row in rows[:2]:
    expected.written("pairs", row["url"])
  expected.counted("skipped/unreadable_row_group", f"{path}:row group 1")
  pq.write_table(table.schema.empty_table(), tmp / "no-rows.parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("parquet")
  media = corpus.make_media(tmp)
  (tmp / "in").mkdir()
  expected = Expected()
  left_out = shared_files(tmp / "in", corpus.row_kinds(media.secret) + own_kinds(), expected)
  file_kinds(tmp / "in", expected)
  goods = corpus.good_rows(NUM_GOOD_FILES * 2, "pq")
  for i in range(NUM_GOOD_FILES):  # One layout a file: a table gives every row all its columns.
    rows = goods[i::NUM_GOOD_FILES]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "in" / f"good-{i}.parquet")
    for row in rows:
      expected.written(corpus.record_kind(row), row["url"])
  summary = convert("parquet", sorted((tmp / "in").iterdir()), tmp / "out",
                    corpus.limits(media.root))
  return types.SimpleNamespace(summary=summary, out=tmp / "out", expected=expected,
                               left_out=left_out, records=read_records(tmp / "out"))


def test_every_good_document_once_and_every_bad_input_counted(run):
  check(run.summary, run.out, run.expected)


def test_kinds_parquet_cannot_hold(run):
  """The shared kinds left out: raw lines, top-level non-objects, lists that mix types (int and
  float, str and int), lone surrogates; at least 40 bad kinds remain."""
  names = {k.name for k in run.left_out}
  assert {k.name for k in corpus.line_kinds()} <= names
  assert {"null_row", "list_row", "lone_surrogate", "number_image", "index_string"} <= names
  held = [k for k in corpus.row_kinds(corpus.Path("/x")) + own_kinds() if k.name not in names]
  assert sum(k.bad for k in held) >= 40


def test_bytes_and_binary_text_are_kept(run):
  docs = by_source(run.records)
  assert docs["kind:binary_text"].texts[0].data == b"binary text"
  assert [p.data for p in docs["kind:image_bytes"].images] == [OK]
  assert [p.time for p in docs["kind:video_bytes"].images] == [0, 1, 2, 3]
  assert corpus.SECRET not in corpus.all_parts(run.records)


def test_a_file_of_mixed_layouts_keeps_every_row(tmp_path):
  """A table gives every row all its columns, null where the row's layout has none: the layout is
  read from the fields that hold values."""
  media_files = corpus.make_media(tmp_path)
  rows = corpus.good_rows(12)
  columns = sorted({key for row in rows for key in row})
  pq.write_table(pa.table({c: [row.get(c) for row in rows] for c in columns}),
                 tmp_path / "mixed.parquet")
  summary = convert("parquet", [tmp_path / "mixed.parquet"], tmp_path / "out",
                    corpus.limits(media_files.root))
  expected = Expected()
  for row in rows:
    expected.written(corpus.record_kind(row), row["url"])
  check(summary, tmp_path / "out", expected)
