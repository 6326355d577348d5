"""The wds converter on one run over WebDataset tars: a mixed tar of good samples (pairs, MP4 and
GIF videos, .json documents), every shared row kind as a KEY.json member and the tar's own bad kinds
(incomplete samples, links and devices, bad media and captions, members over max_file_bytes,
undecodable names); and tars that break: truncated plain / gzip / zstd, not a tar, empty.

The converter is given --image_root's limits so that .json rows naming files behave as in jsonl (the
CLI has no --image_root for wds: there a name in a .json is counted as no_media_root)."""

import io
import json
import os
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from tests.data.builders import assert_1fps_colours
from tests.data.convert import corpus
from tests.data.convert.check import Expected, by_source, check, convert, read_records
from tests.data.convert.corpus import BOM, DIR, FIFO, OK, OK2, Kind, Link, cut, skip

HARDLINK, DEVICE = "hardlink", "device"


def tar_bytes(members: list[tuple[str | bytes, object]], fmt=tarfile.GNU_FORMAT) -> bytes:
  """A tar of (name, bytes | Link | FIFO | DIR | HARDLINK | DEVICE) members, in order."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
    for name, spec in members:
      info = tarfile.TarInfo(os.fsdecode(name))
      if isinstance(spec, bytes):
        info.size = len(spec)
        tar.addfile(info, io.BytesIO(spec))
        continue
      if isinstance(spec, Link):
        info.type, info.linkname = tarfile.SYMTYPE, spec.target
      else:
        info.type = {FIFO: tarfile.FIFOTYPE, DIR: tarfile.DIRTYPE, HARDLINK: tarfile.LNKTYPE,
                     DEVICE: tarfile.CHRTYPE}[spec]
        info.linkname = "other.jpg" if spec == HARDLINK else ""
      tar.addfile(info)
  return buf.getvalue()


def member_kinds() -> list[Kind]:
  """The tar's own kinds; `row` is the sample's members ((extension, spec) pairs; key = name)."""
  def member(name, members, expect=(), kind=""):
    return Kind(name, tuple(members), expect, kind=kind, source=name)

  def pair(name, image, caption, expect):
    return member(name, [("jpg", image), ("txt", caption)], expect)

  def video(name, data, expect):
    return member(name, [("mp4", data), ("txt", b"a caption")], expect)

  return [
      member("only_caption", [("txt", b"a caption")], skip("incomplete_sample")),
      member("only_image", [("jpg", OK)], skip("incomplete_sample")),
      member("image_and_json", [("jpg", OK), ("json", b"{}")], skip("incomplete_sample")),
      member("unknown_extension", [("cls", b"3")], skip("incomplete_sample")),
      member("no_extension", [("", b"data")], skip("incomplete_sample")),
      member("symlink_member", [("jpg", Link("/etc/passwd"))], skip("not_a_file")),
      member("hardlink_member", [("jpg", HARDLINK)], skip("not_a_file")),
      member("fifo_member", [("jpg", FIFO)], skip("not_a_file")),
      member("device_member", [("jpg", DEVICE)], skip("not_a_file")),
      member("json_empty", [("json", b"")], skip("bad_json")),
      pair("corrupt_image", corpus.CORRUPT, b"a", skip("corrupt_image")),
      pair("html_as_image", corpus.PAGE, b"a", skip("corrupt_image")),
      pair("empty_image", b"", b"a", skip("empty_image")),
      pair("truncated_jpeg", corpus.TRUNCATED_JPEG, b"a", skip("corrupt_image")),
      member("gif_bomb", [("gif", corpus.GIF_BOMB), ("txt", b"a")], skip("enormous_image")),
      pair("over_max_pixels", corpus.HUGE_JPEG, b"a", skip("enormous_image")),
      pair("image_over_max_file_bytes", corpus.BIG_JPEG, b"a", skip("file_too_large")),
      pair("caption_over_max_file_bytes", OK, b"x" * (corpus.MAX_FILE_BYTES + 1),
           skip("file_too_large")),
      pair("caption_not_utf8", OK, "café".encode("latin-1"), skip("invalid_utf8")),
      pair("caption_empty", OK, b"", skip("no_text")),
      pair("caption_blank", OK, b" \r\n\t", skip("no_text")),
      video("video_corrupt", corpus.CORRUPT, skip("corrupt_video")),
      video("video_still", OK, skip("no_frames")),
      video("video_over_max_pixels", corpus.mp4(1, 2, corpus.HUGE_MP4_SIZE),
            skip("enormous_video")),
      member("animated_bomb", [("gif", corpus.ANIMATED_BOMB), ("txt", b"a")],
             skip("enormous_video")),
      member("caption_over_cap", [("jpg", OK), ("txt", b"x" * 1500)], cut("max_text_bytes"),
             kind="pairs"),
      member("video_over_cap", [("gif", corpus.LONG_ANIMATION), ("txt", b"a")],
             cut("max_video_seconds"), kind="video"),
      # Good, though unusual: written, nothing counted.
      member("upper_case", [("JPG", OK), ("TXT", b"upper")], kind="pairs"),
      member("png_named_jpg", [("jpg", png()), ("txt", b"a png")], kind="pairs"),
      member("caption_bom", [("jpg", OK), ("txt", BOM + b"with a BOM")], kind="pairs"),
      member("video_mp4", [("mp4", corpus.mp4()), ("txt", b"an mp4")], kind="video"),
      member("video_gif", [("gif", corpus.ANIMATION), ("txt", b"a gif")], kind="video"),
  ]


def png() -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
  return buf.getvalue()


def mixed_tar(path, kinds: list[Kind], expected: Expected) -> None:
  """Good samples among the row kinds (as KEY.json) and the tar's own kinds, plus members the
  keying must cope with (a directory, a key in a folder, undecodable names)."""
  goods = [("json", row) for row in corpus.good_rows(12, "wds")]
  goods += [("pair", i) for i in range(4)]
  members = [("adir/", DIR)]
  for item in corpus.interleave(goods, kinds):
    if isinstance(item, Kind) and isinstance(item.row, tuple):  # The tar's own kind.
      key = item.name
      members += [(f"{key}.{ext}" if ext else key, spec) for ext, spec in item.row]
      first = members[-len(item.row)][0]
      expected.add(item, f"{path}:{first if item.expect == skip('not_a_file') else key}")
    elif isinstance(item, Kind):  # A row kind, as a .json member.
      members.append((f"json_{item.name}.json", item.line()))
      expected.add(item, f"{path}:json_{item.name}")
    elif item[0] == "json":
      members.append((f"{item[1]['url']}.json", json.dumps(item[1]).encode()))
      expected.written(corpus.record_kind(item[1]), item[1]["url"])
    else:
      key = f"pair-{item[1]}"
      members += [(f"{key}.jpg", corpus.jpeg(10 + item[1])),
                  (f"{key}.txt", f"pair {item[1]}".encode())]
      expected.written("pairs", key)
  members += [("sub/folder_key.jpg", OK), ("sub/folder_key.txt", b"in a folder"),
              (b"caf\xe9.jpg", OK2), (b"caf\xe9.txt", b"an undecodable key"),
              (b"bad\xffname.cls", b"x")]
  expected.written("pairs", "sub/folder_key")
  expected.written("pairs", "caf\\xe9")
  expected.counted("skipped/incomplete_sample", f"{path}:bad\\xffname")
  path.write_bytes(tar_bytes(members))


def broken_tar(path, prefix: str, compress, expected: Expected) -> None:
  """Four good pairs, then a big member the stream breaks inside (plain: cut in its data; gzip /
  zstd: cut where the readable prefix ends in its data): the pairs are kept, the break counted once
  at the big member's key."""
  members = []
  for i in range(4):
    members += [(f"{prefix}-{i}.jpg", corpus.jpeg(20 + i)), (f"{prefix}-{i}.txt", b"a caption")]
    expected.written("pairs", f"{prefix}-{i}")
  noise = np.random.default_rng(0).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
  members += [(f"{prefix}-big.jpg", noise), (f"{prefix}-big.txt", b"never read")]
  whole = tar_bytes(members)
  with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
    big = tar.getmember(f"{prefix}-big.jpg")
  inside = big.offset_data + big.size // 2
  if compress is None:
    data = whole[:inside]
  else:
    data = compress(whole)
    data = data[:next(n for n in range(len(data))
                      if len(corpus.readable_prefix(data[:n])) > inside)]
    assert len(corpus.readable_prefix(data)) < big.offset_data + big.size
  path.write_bytes(data)
  expected.counted("skipped/truncated_tar", f"{path}:{prefix}-big")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("wds")
  media = corpus.make_media(tmp)
  (tmp / "in").mkdir()
  expected = Expected()
  kinds = corpus.row_kinds(media.secret) + member_kinds()
  mixed_tar(tmp / "in" / "mixed.tar", kinds, expected)
  broken_tar(tmp / "in" / "truncated.tar", "plain", None, expected)
  broken_tar(tmp / "in" / "truncated.tar.gz", "gz", corpus.gzipped, expected)
  broken_tar(tmp / "in" / "truncated.tar.zst", "zst", corpus.zstd_blocks, expected)
  good = [(f"tgz-{i}.{ext}", data) for i in range(3) for ext, data in (("jpg", OK), ("txt", b"c"))]
  (tmp / "in" / "good.tar.gz").write_bytes(corpus.gzipped(tar_bytes(good)))
  for i in range(3):
    expected.written("pairs", f"tgz-{i}")
  for name, data in [("not-a-tar.tar", b"not a tar " * 100), ("empty.tar", b"")]:
    (tmp / "in" / name).write_bytes(data)
    expected.counted("skipped/unreadable_file", str(tmp / "in" / name))
  summary = convert("wds", sorted((tmp / "in").iterdir()), tmp / "out", corpus.limits(media.root))
  return types.SimpleNamespace(summary=summary, out=tmp / "out", expected=expected, kinds=kinds,
                               records=read_records(tmp / "out"))


def test_every_good_sample_once_and_every_bad_input_counted(run):
  assert sum(k.bad for k in run.kinds) >= 40
  check(run.summary, run.out, run.expected)


def test_samples_become_pairs_and_videos(run):
  docs = by_source(run.records)
  assert [p.data for p in docs["pair-2"].parts] == [corpus.jpeg(12), b"pair 2"]
  assert docs["caption_bom"].texts[0].data == b"with a BOM"
  assert docs["upper_case"].texts[0].data == b"upper"
  assert docs["caf\\xe9"].images[0].data == OK2
  for source in ("video_mp4", "video_gif"):
    video = docs[source]
    assert_1fps_colours(video)
  assert [p.time for p in docs["video_over_cap"].images] == [0, 1, 2, 3]


def test_no_record_holds_a_file_from_outside_the_root(run):
  parts = corpus.all_parts(run.records)
  assert corpus.SECRET not in parts and corpus.PASSWD not in parts
