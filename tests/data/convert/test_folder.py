"""The folder converter on one run over a folder of good pairs, videos (MP4, animated GIF) and frame
sequences among crafted bad entries: missing or stray captions, unknown and undecodable names, links
leading out of the folder or nowhere, FIFOs, bad images / videos / captions, over-limit files, and
frame folders that lack frames or a caption. Every good entry arrives once, every bad one is counted
with its folder/entry, and nothing outside the folder is read."""

from __future__ import annotations

import dataclasses
import os
import types

import pytest

from data_pipelines.mixture import build_mixture
from tests.data.builders import assert_1fps_colours, jpeg, single
from tests.data.convert import corpus
from tests.data.convert.check import Expected, by_source, check, convert, read_records
from tests.data.convert.corpus import BOM, CORRUPT, DIR, FIFO, OK, OK2, PAGE, Link

CAPTION = {"caption.txt": b"a caption"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """A crafted part of the folder: its files (name -> bytes | Link | FIFO | DIR), what they must
  count ((entry, counter, part) triples) and the records they must give ((kind, source) pairs)."""
  name: str
  files: dict
  counts: tuple = ()
  written: tuple = ()

  @property
  def bad(self) -> bool:
    return bool(self.counts)


def one(name: str, files: dict, entry: str, counter: str) -> Entry:
  return Entry(name, files, ((entry, counter, ""),))


def pair(name: str, image: bytes, caption: bytes, reason: str) -> Entry:
  files = {f"{name}.jpg": image, f"{name}.txt": caption}
  return one(name, files, f"{name}.jpg", "skipped/" + reason)


def frames(name: str, files: dict, counts=(), written=True) -> Entry:
  """A frame folder `name` (files relative to it), written as a video unless `written` is False."""
  return Entry(name, {f"{name}/{f}": v for f, v in files.items()},
               tuple((name, c, p) for c, p in counts), (("video", name),) if written else ())


def good(name: str, files: dict, kind: str, source: str) -> Entry:
  return Entry(name, files, written=((kind, source),))


def entries(folder: str, outside: str) -> list[Entry]:
  """The folder's entries; `outside` holds secret.jpg, secret.txt and frames/ (a frame folder)."""
  secret, secret_txt = f"{outside}/secret.jpg", f"{outside}/secret.txt"
  latin1 = "café".encode("latin-1")
  return [
      one("image_without_caption", {"nocap.jpg": OK}, "nocap.jpg", "skipped/missing_caption"),
      one("video_without_caption", {"lonely.mp4": corpus.mp4()}, "lonely.mp4",
          "skipped/missing_caption"),
      one("caption_without_media", {"orphan.txt": b"a"}, "orphan.txt",
          "skipped/caption_without_media"),
      one("unknown_file", {"README.md": b"# hi"}, "README.md", "skipped/unknown_file"),
      one("no_extension", {"LICENSE": b"MIT"}, "LICENSE", "skipped/unknown_file"),
      one("hidden_file", {".DS_Store": b"\0\0"}, ".DS_Store", "skipped/unknown_file"),
      one("undecodable_name", {b"bad\xffname.md": b"x"}, "bad\\xffname.md", "skipped/unknown_file"),
      one("dangling_symlink", {"dangling.jpg": Link("nowhere.jpg"), "dangling.txt": b"a"},
          "dangling.jpg", "skipped/missing_media"),
      one("symlink_out", {"escape.jpg": Link(secret), "escape.txt": b"a"}, "escape.jpg",
          "skipped/path_outside_root"),
      one("relative_symlink_out", {"escape2.jpg": Link(os.path.relpath(secret, folder)),
                                   "escape2.txt": b"a"}, "escape2.jpg",
          "skipped/path_outside_root"),
      one("symlinked_folder_out", {"outdir": Link(f"{outside}/frames")}, "outdir",
          "skipped/path_outside_root"),
      Entry("caption_symlink_out", {"leak.jpg": OK, "leak.txt": Link(secret_txt)},
            (("leak.txt", "skipped/path_outside_root", ""),
             ("leak.jpg", "skipped/path_outside_root", ""))),
      one("caption_dangling", {"dcap.jpg": OK, "dcap.txt": Link("nowhere.txt")}, "dcap.jpg",
          "skipped/missing_media"),
      pair("corrupt_image", CORRUPT, b"a", "corrupt_image"),
      pair("html_as_image", PAGE, b"a", "corrupt_image"),
      pair("empty_image", b"", b"a", "empty_image"),
      pair("truncated_jpeg", corpus.TRUNCATED_JPEG, b"a", "corrupt_image"),
      one("gif_bomb", {"bomb.gif": corpus.GIF_BOMB, "bomb.txt": b"a"}, "bomb.gif",
          "skipped/enormous_image"),
      pair("over_max_pixels", corpus.HUGE_JPEG, b"a", "enormous_image"),
      pair("over_max_file_bytes", corpus.BIG_JPEG, b"a", "file_too_large"),
      pair("caption_over_max_file_bytes", OK, b"x" * (corpus.MAX_FILE_BYTES + 1), "file_too_large"),
      pair("caption_not_utf8", OK, latin1, "invalid_utf8"),
      pair("caption_empty", OK, b"", "no_text"),
      pair("caption_blank", OK, b" \r\n\t", "no_text"),
      one("fifo_image", {"fifo.jpg": FIFO, "fifo.txt": b"a"}, "fifo.jpg", "skipped/not_a_file"),
      one("fifo_caption", {"fifocap.jpg": OK, "fifocap.txt": FIFO}, "fifocap.jpg",
          "skipped/not_a_file"),
      Entry("caption_is_a_folder", {"capdir.jpg": OK, "capdir.txt": DIR},
            (("capdir.txt", "skipped/incomplete_video", ""),
             ("capdir.jpg", "skipped/not_a_file", ""))),
      one("folder_named_jpg", {"dir.jpg": DIR}, "dir.jpg", "skipped/incomplete_video"),
      one("video_corrupt", {"bad.mp4": CORRUPT, "bad.txt": b"a"}, "bad.mp4",
          "skipped/corrupt_video"),
      one("video_still", {"still.mp4": OK, "still.txt": b"a"}, "still.mp4", "skipped/no_frames"),
      one("video_over_max_pixels", {"huge.mp4": corpus.mp4(1, 2, corpus.HUGE_MP4_SIZE),
                                    "huge.txt": b"a"}, "huge.mp4", "skipped/enormous_video"),
      one("animated_bomb", {"bombanim.gif": corpus.ANIMATED_BOMB, "bombanim.txt": b"a"},
          "bombanim.gif", "skipped/enormous_video"),
      # Frame folders.
      frames("frames_without_caption", {"0.jpg": OK}, [("skipped/incomplete_video", "")], False),
      frames("caption_without_frames", CAPTION, [("skipped/incomplete_video", "")], False),
      frames("frames_not_images", {"notes.md": b"x"} | CAPTION, [("skipped/incomplete_video", "")],
             False),
      one("empty_folder", {"empty_folder": DIR}, "empty_folder", "skipped/incomplete_video"),
      frames("all_frames_bad", {"0.jpg": CORRUPT, "1.jpg": PAGE} | CAPTION,
             [("dropped/corrupt_image", "0.jpg"), ("dropped/corrupt_image", "1.jpg"),
              ("skipped/no_frames", "")], False),
      frames("one_frame_corrupt", {"0.jpg": OK, "1.jpg": CORRUPT, "2.jpg": OK2} | CAPTION,
             [("dropped/corrupt_image", "1.jpg")]),
      frames("frame_symlink_out", {"0.jpg": OK, "1.jpg": Link(secret)} | CAPTION,
             [("dropped/path_outside_root", "1.jpg")]),
      frames("frame_fifo", {"0.jpg": OK, "1.jpg": FIFO} | CAPTION,
             [("dropped/not_a_file", "1.jpg")]),
      frames("frame_bomb", {"0.jpg": OK, "1.gif": corpus.GIF_BOMB} | CAPTION,
             [("dropped/enormous_image", "1.gif")]),
      frames("frames_caption_empty", {"0.jpg": OK, "caption.txt": b""}, [("skipped/no_text", "")],
             False),
      frames("frames_caption_not_utf8", {"0.jpg": OK, "caption.txt": latin1},
             [("skipped/invalid_utf8", "")], False),
      frames("frames_caption_symlink_out", {"0.jpg": OK, "caption.txt": Link(secret_txt)},
             [("skipped/path_outside_root", "")], False),
      # Caps: kept, cut (counted).
      frames("too_many_frames", {f"{i}.jpg": OK for i in range(6)} | CAPTION,
             [("cut/max_video_seconds", "")]),
      Entry("video_over_cap", {"long.gif": corpus.LONG_ANIMATION, "long.txt": b"a"},
            (("long.gif", "cut/max_video_seconds", ""),), (("video", "long.gif"),)),
      Entry("caption_over_cap", {"longcap.jpg": OK, "longcap.txt": b"x" * 1500},
            (("longcap.jpg", "cut/max_text_bytes", ""),), (("pairs", "longcap.jpg"),)),
      # Good: written, nothing counted.
      good("pair", {"cat.jpg": OK, "cat.txt": b"a cat\n"}, "pairs", "cat.jpg"),
      good("upper_case", {"DOG.JPG": OK2, "DOG.txt": b"a dog"}, "pairs", "DOG.JPG"),
      good("caption_bom", {"bom.jpg": OK, "bom.txt": BOM + b"with a BOM"}, "pairs", "bom.jpg"),
      good("undecodable_pair", {b"caf\xe9.jpg": OK2, b"caf\xe9.txt": "a café".encode()}, "pairs",
           "caf\\xe9.jpg"),
      good("two_dots", {"a.b.jpg": OK, "a.b.txt": b"two dots"}, "pairs", "a.b.jpg"),
      good("symlink_inside", {"linked.jpg": Link("cat.jpg"), "linked.txt": b"linked"}, "pairs",
           "linked.jpg"),
      good("video_mp4", {"clip.mp4": corpus.mp4(), "clip.txt": b"colours"}, "video", "clip.mp4"),
      good("video_gif", {"anim.gif": corpus.ANIMATION, "anim.txt": b"an animation"}, "video",
           "anim.gif"),
      frames("frame_sequence", {f"frame{i:02d}.jpg": jpeg(10 + i) for i in range(4)} |
             {"caption.txt": b"a moving thing\n"}),
  ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("folder")
  (tmp / "secret.jpg").write_bytes(corpus.SECRET)
  (tmp / "secret.txt").write_bytes(b"a secret caption")
  corpus.make_files(tmp / "frames", {"0.jpg": corpus.SECRET} | CAPTION)
  folder = str(tmp / "in")
  made, expected = entries(folder, str(tmp)), Expected()
  for entry in made:
    corpus.make_files(tmp / "in", entry.files)
    for name, counter, part in entry.counts:
      expected.counted(counter, os.path.join(folder, name), part)
    for kind, source in entry.written:
      expected.written(kind, source)
  summary = convert("folder", [folder], tmp / "out", corpus.limits(None))
  return types.SimpleNamespace(summary=summary, out=tmp / "out", expected=expected, entries=made,
                               records=read_records(tmp / "out"))


def test_every_good_entry_once_and_every_bad_one_counted(run):
  assert sum(e.bad for e in run.entries) >= 40
  check(run.summary, run.out, run.expected)


def test_pairs_and_frame_sequences(run, tokenizer):
  docs = by_source(run.records)
  assert [p.data for p in docs["cat.jpg"].parts] == [OK, b"a cat"]
  assert docs["bom.jpg"].texts[0].data == b"with a BOM"
  assert docs["caf\\xe9.jpg"].texts[0].data == "a café".encode()
  clip = docs["frame_sequence"]
  assert [p.time for p in clip.images] == [0, 1, 2, 3] and clip.texts[0].data == b"a moving thing"
  assert [p.data for p in clip.images] == [jpeg(10 + i) for i in range(4)]
  assert [p.time for p in docs["one_frame_corrupt"].images] == [0, 2]  # Frame 1 dropped.
  assert [p.time for p in docs["too_many_frames"].images] == [0, 1, 2, 3]
  config = single("video", str(run.out / "video"), batch_size=1, num_frames=4)
  step = next(build_mixture(config, image_size=16, tokenizer=tokenizer))
  assert step["video"]["images"].shape == (1, 1, 4, 16, 16, 3)


def test_video_files_sampled_at_1_fps(run):
  docs = by_source(run.records)
  for source in ("clip.mp4", "anim.gif"):  # 3.5 s of MPEG-4; 8 GIF frames of 0.5 s.
    video = docs[source]
    assert_1fps_colours(video)
  assert [p.time for p in docs["long.gif"].images] == [0, 1, 2, 3]


def test_nothing_outside_the_folder_is_read(run):
  assert corpus.SECRET not in corpus.all_parts(run.records)
