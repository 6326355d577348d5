"""The jsonl converter on one run over a mixed corpus: every shared row kind (corpus.row_kinds) as a
line among good OBELICS / MMC4 / pair / video rows, plus gzip and zstd files, whole, truncated and
with trailing garbage. Every good document arrives once, every bad input is counted and logged with
its file:line, and no record holds a byte read from outside --image_root."""

import json
import types

import pytest

from data_pipelines import records
from tests.data.builders import assert_1fps_colours
from tests.data.convert import corpus
from tests.data.convert.check import Expected, by_source, check, convert, read_records
from tests.data.convert.corpus import BOM, OK, OK2

NUM_GOOD = 18


def write_lines(path, items, expected: Expected, first: bytes = BOM) -> None:
  """Writes items (good rows and Kinds) one a line, with blank lines between some, `first` before
  the first line and no newline after the last; adds each to `expected` at its file:line."""
  lines = []
  for i, item in enumerate(items):
    if i % 10 == 5:
      lines.append(b" \t")  # Blank lines are not documents: nothing is counted.
    where = f"{path}:{len(lines) + 1}"
    if isinstance(item, corpus.Kind):
      lines.append(item.line())
      expected.add(item, where)
    else:
      lines.append(json.dumps(item).encode())
      expected.written(corpus.record_kind(item), item["url"])
  path.write_bytes(first + b"\n".join(lines))


def good_file(path, prefix: str, n: int, compress, expected: Expected) -> None:
  """n good rows, compressed by `compress` (bytes -> bytes), all expected."""
  rows = corpus.good_rows(n, prefix)
  path.write_bytes(compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
  for row in rows:
    expected.written(corpus.record_kind(row), row["url"])


def truncated_file(path, prefix: str, compress, expected: Expected) -> int:
  """20 good rows compressed, cut where 10 of them can be read back: the rows whose line is whole
  before the break are expected, and the break once as truncated_file; returns how many are kept."""
  rows = corpus.good_rows(20, prefix)
  data = compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
  size = next(n for n in range(len(data)) if corpus.readable_prefix(data[:n]).count(b"\n") >= 10)
  data = data[:size]
  path.write_bytes(data)
  kept = corpus.readable_prefix(data).count(b"\n")
  for row in rows[:kept]:
    expected.written(corpus.record_kind(row), row["url"])
  expected.counted("skipped/truncated_file", f"{path}:{kept + 1}")
  return kept


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("jsonl")
  media = corpus.make_media(tmp)
  kinds = corpus.row_kinds(media.secret)
  expected = Expected()
  write_lines(tmp / "mixed.jsonl", corpus.interleave(corpus.good_rows(NUM_GOOD), kinds), expected)
  good_file(tmp / "two-members.jsonl.gz", "gz", 6,
            lambda d: corpus.gzipped(d[:200]) + corpus.gzipped(d[200:]), expected)
  good_file(tmp / "two-frames.jsonl.zst", "zst", 6,
            lambda d: corpus.zstd_blocks(d[:300]) + corpus.zstd_blocks(d[300:]), expected)
  kept = {"gz": truncated_file(tmp / "truncated.jsonl.gz", "tgz", corpus.gzipped, expected),
          "zst": truncated_file(tmp / "truncated.jsonl.zst", "tzst", corpus.zstd_blocks, expected)}
  good_file(tmp / "garbage-after.jsonl.gz", "gga", 3, lambda d: corpus.gzipped(d) + b"garbage!",
            expected)
  expected.counted("skipped/truncated_file", f"{tmp / 'garbage-after.jsonl.gz'}:4")
  (tmp / "header-only.jsonl.gz").write_bytes(corpus.gzipped(b"{}\n")[:6])
  expected.counted("skipped/truncated_file", f"{tmp / 'header-only.jsonl.gz'}:1")
  (tmp / "empty.jsonl").write_bytes(b"")
  (tmp / "blank.jsonl").write_bytes(b"\n \n\r\n")
  inputs = sorted(p for p in tmp.iterdir() if ".jsonl" in p.name)
  summary = convert("jsonl", inputs, tmp / "out", corpus.limits(media.root))
  return types.SimpleNamespace(summary=summary, out=tmp / "out", expected=expected, kinds=kinds,
                               kept=kept, records=read_records(tmp / "out"))


def test_every_good_document_once_and_every_bad_input_counted(run):
  assert sum(k.bad for k in run.kinds) >= 40
  recs = check(run.summary, run.out, run.expected)
  assert len(recs) == sum(run.expected.sources.values())


def test_truncated_streams_keep_the_lines_before_the_break(run):
  assert 10 <= run.kept["gz"] < 20 and 10 <= run.kept["zst"] < 20
  assert run.summary.family("skipped")["truncated_file"] == 4


def test_no_record_holds_a_file_from_outside_the_root(run):
  parts = corpus.all_parts(run.records)
  assert corpus.SECRET not in parts and corpus.PASSWD not in parts


def test_good_layouts_in_reading_order(run):
  docs = by_source(run.records)
  obelics, mmc4, base64, pair = (docs[f"good-{i}"] for i in range(4))
  assert layout(obelics) == ["an intro", OK, "an outro"]
  assert layout(mmc4) == [OK, "first", OK2, "second"]  # Each image before its sentence.
  assert layout(base64) == [OK, "only"]
  assert (pair.kind, layout(pair)) == ("pairs", [OK, "a photo"])
  assert layout(docs["kind:unicode_text"])[0] == "日本語 עברית 🙂"
  assert layout(docs["kind:bom_row"]) == [OK, "a"]


def test_videos_sampled_at_1_fps(run):
  docs = by_source(run.records)
  for source in ("good-4", "good-5"):  # An MP4 of 3.5 s; a GIF of 8 frames of 0.5 s.
    assert docs[source].kind == "video"
    assert_1fps_colours(docs[source])


def test_dropped_images_leave_the_rest_of_the_document(run):
  docs = by_source(run.records)
  for name in corpus.MEDIA_REASONS:
    assert layout(docs[f"kind:{name}"]) == ["intro", OK, "middle"], name


def test_caps_cut_documents_at_their_limit(run):
  docs = by_source(run.records)
  assert docs["kind:text_over_cap"].texts[0].data == "é".encode() * 500  # 1000 bytes.
  assert len(docs["kind:images_over_cap"].images) == 3
  assert docs["kind:caption_over_cap"].texts[0].data == b"x" * 1000
  assert [p.time for p in docs["kind:video_over_cap"].images] == [0, 1, 2, 3]


def layout(record: records.Record) -> list:
  """Texts as str, images as their bytes, in order."""
  return [p.data.decode() if p.type == "text" else p.data for p in record.parts]
