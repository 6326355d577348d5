"""The CLI in subprocesses (all started at once, ~5 s in all), and what conversion never damages.

CLI: a run prints its JSON summary and exits 0; over --max_reject_fraction it exits 1 and leaves
--out as it was; a non-empty --out, an input or tfds dataset that is not there, or --out under a
file give exit 2 (1 for the file system) and one line; no traceback in any case.

Files: a non-empty --out without --overwrite, or --overwrite over a directory that is not our
dataset (no manifest, another format, a manifest naming files outside it) is refused before any
work, and left byte for byte; --overwrite replaces our dataset, and a user's file inside it
survives; a run that fails removes only the temporary directory it made; --out may be a link to a
directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from data_pipelines import manifest, records
from data_pipelines.convert import pipeline
from data_pipelines.convert.sources import Converter
from tests.data.convert import corpus
from tests.data.convert.check import Expected, check, convert

REPO = Path(__file__).resolve().parents[3]


def snapshot(root: Path) -> dict[str, bytes | str]:
  """Every path under root (links not followed) -> its bytes, link target or "dir"."""
  out = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = Path(folder, name)
      rel = str(path.relative_to(root))
      out[rel] = (os.readlink(path) if path.is_symlink() else "dir" if path.is_dir()
                  else path.read_bytes())
  return out


def our_dataset(out: Path, user_files: dict[str, bytes] = {}) -> None:
  """A dataset as data_pipelines.convert writes it (one pair), plus `user_files` put in it since."""
  with records.ShardWriter(str(out / "pairs"), "pairs") as writer:
    writer.write(records.pair("old", corpus.OK, b"an old caption"))
  (out / manifest.REJECTS).write_bytes(b"")
  manifest.write(str(out), {"pairs": ["pairs/pairs-00000.array_record"]}, {"written/pairs": 1}, [],
                 "an earlier run")
  corpus.make_files(out, user_files)


def small_corpus(tmp: Path, goods: int, kinds: list[str]) -> tuple[Path, Expected]:
  """A jsonl of `goods` good rows then the named row kinds; media under tmp/media."""
  media = tmp / "media" if (tmp / "media").exists() else corpus.make_media(tmp).root
  by_name = {k.name: k for k in corpus.row_kinds(tmp / "secret.jpg")}
  path, expected, lines = tmp / f"docs-{goods}.jsonl", Expected(), []
  for row in corpus.good_rows(goods, f"cli{goods}"):
    lines.append(json.dumps(row).encode())
    expected.written(corpus.record_kind(row), row["url"])
  for name in kinds:
    lines.append(by_name[name].line())
    expected.add(by_name[name], f"{path}:{len(lines)}")
  path.write_bytes(b"\n".join(lines) + b"\n")
  assert media.is_dir()
  return path, expected


def start(tmp: Path, name: str, *args: str) -> types.SimpleNamespace:
  """Starts `python -m data_pipelines.convert args...`, its output to files under tmp."""
  out, err = open(tmp / f"{name}.stdout", "wb"), open(tmp / f"{name}.stderr", "wb")
  proc = subprocess.Popen([sys.executable, "-m", "data_pipelines.convert", *args], cwd=REPO,
                          stdout=out, stderr=err)
  return types.SimpleNamespace(proc=proc, tmp=tmp, name=name)


def finish(started: types.SimpleNamespace) -> types.SimpleNamespace:
  rc = started.proc.wait(timeout=300)
  stdout = (started.tmp / f"{started.name}.stdout").read_text()
  stderr = (started.tmp / f"{started.name}.stderr").read_text()
  assert "Traceback" not in stderr, stderr
  return types.SimpleNamespace(rc=rc, stdout=stdout, stderr=stderr,
                               message=[line for line in stderr.splitlines()
                                        if line.startswith("convert:")])


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Every CLI case, run at once; the results by name, with what each started from."""
  tmp = tmp_path_factory.mktemp("cli")
  docs, expected = small_corpus(tmp, 6, ["bad_json", "integer_text", "parent_dir_name",
                                         "text_over_cap"])
  failing, _ = small_corpus(tmp, 2, ["bad_json", "texts_null", "caption_empty"])
  media = str(tmp / "media")
  ours, user_dir = tmp / "ours", tmp / "user"
  our_dataset(ours, {"pairs/notes.txt": b"mine", "README": b"also mine"})
  our_dataset(tmp / "ours-too")
  corpus.make_files(user_dir, {"thesis.tex": b"\\begin{document}", "data/x.csv": b"1,2"})
  (tmp / "a-file").write_bytes(b"not a folder")
  before = {p: snapshot(p) for p in (tmp / "ours-too", user_dir, tmp / "a-file")}
  started = [
      start(tmp, "ok", "jsonl", "--out", str(ours), "--overwrite", "--image_root", media,
            "--max_text_bytes", "1000", str(docs)),
      start(tmp, "over_limit", "jsonl", "--out", str(tmp / "ours-too"), "--overwrite",
            "--image_root", media, "--max_reject_fraction", "0.5", str(failing)),
      start(tmp, "not_empty", "jsonl", "--out", str(user_dir), "--image_root", media, str(docs)),
      start(tmp, "no_input", "jsonl", "--out", str(tmp / "new"), str(tmp / "missing.jsonl")),
      start(tmp, "no_dataset", "tfds", "--out", str(tmp / "new"), "--name", "no_such_dataset",
            "--data_dir", str(tmp / "tfds")),
      start(tmp, "out_under_a_file", "jsonl", "--out", str(tmp / "a-file" / "out"),
            "--image_root", media, str(docs)),
  ]
  results = {s.name: finish(s) for s in started}
  return types.SimpleNamespace(results=results, tmp=tmp, expected=expected, before=before,
                               ours=ours, user_dir=user_dir)


def test_a_run_prints_its_summary_and_replaces_our_dataset(cli):
  ok = cli.results["ok"]
  assert ok.rc == 0 and ok.message == [], ok.stderr
  summary = json.loads(ok.stdout)
  assert summary["published"] and summary["out"] == str(cli.ours)
  counts = {f"{family}/{k}": v for family in ("written", "skipped", "dropped", "cut")
            for k, v in summary[family].items()}
  assert counts == dict(cli.expected.counts)
  check(pipeline.Summary(summary["out"], counts, True), cli.ours, cli.expected)
  assert (cli.ours / "pairs" / "notes.txt").read_bytes() == b"mine"  # The user's files stay.
  assert (cli.ours / "README").read_bytes() == b"also mine"
  assert manifest.read(str(cli.ours)).command.endswith("docs-6.jsonl")


def test_over_max_reject_fraction_exits_1_and_leaves_out_as_it_was(cli):
  result = cli.results["over_limit"]
  assert result.rc == 1 and len(result.message) == 1, result.stderr
  summary = json.loads(result.stdout)
  assert not summary["published"] and summary["reject_fraction"] == 0.6
  assert snapshot(cli.tmp / "ours-too") == cli.before[cli.tmp / "ours-too"]
  kept = Path(summary["out"])  # The result stays for inspection, beside --out.
  assert kept.parent == cli.tmp and kept.name.startswith(".ours-too.tmp-") and str(kept) in \
      result.message[0]
  assert len((kept / manifest.REJECTS).read_text().splitlines()) == 3


@pytest.mark.parametrize("case, rc, says", [
    ("not_empty", 2, "is not empty"), ("no_dataset", 2, "no_such_dataset"),
    ("out_under_a_file", 1, "a-file")])
def test_refusals_are_one_line(cli, case, rc, says):
  result = cli.results[case]
  assert result.rc == rc and len(result.message) == 1 and says in result.message[0], result.stderr
  assert result.stdout == ""
  assert snapshot(cli.user_dir) == cli.before[cli.user_dir]
  assert (cli.tmp / "a-file").read_bytes() == b"not a folder"
  assert not (cli.tmp / "new").exists()


def test_an_input_that_does_not_exist_is_a_usage_error(cli):
  result = cli.results["no_input"]
  assert result.rc == 2 and "missing.jsonl is not an existing file" in result.stderr
  assert not (cli.tmp / "new").exists()


# ---------------------------------------------------------------------------------- in-process


def attempt(out: Path, overwrite: bool) -> str:
  """pipeline.run into `out`, which must be refused before any work; returns the message."""
  docs, _ = small_corpus(out.parent, 1, [])
  around = sorted(os.listdir(out.parent))
  converter = Converter("jsonl", corpus.limits(out.parent / "media"))
  with pytest.raises(manifest.DatasetError) as refused:
    pipeline.run(converter, [str(docs)], str(out), overwrite=overwrite)
  assert sorted(os.listdir(out.parent)) == around  # No temporary directory was made.
  return str(refused.value)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_user_directory_is_never_written(tmp_path, overwrite):
  user = tmp_path / "user"
  corpus.make_files(user, {"notes.txt": b"mine", "sub/x.bin": b"\0\1", "link": corpus.Link("/etc")})
  before = snapshot(user)
  message = attempt(user, overwrite)
  assert ("not a dataset written by" if overwrite else "is not empty") in message
  assert snapshot(user) == before


@pytest.mark.parametrize("body", [
    {"format": "someone.elses/1", "kinds": {}},
    {"format": manifest.FORMAT, "command": "", "counts": {}, "sources": [],
     "kinds": {"pairs": {"records": 1, "shards": [{"path": "../precious.txt", "records": 1,
                                                   "bytes": 5}]}}}])
def test_overwrite_refuses_a_manifest_we_did_not_write(tmp_path, body):
  (tmp_path / "precious.txt").write_bytes(b"keep!")
  corpus.make_files(tmp_path / "out", {"manifest.json": json.dumps(body).encode()})
  before = snapshot(tmp_path / "out")
  assert "is not one" in attempt(tmp_path / "out", True)
  assert snapshot(tmp_path / "out") == before
  assert (tmp_path / "precious.txt").read_bytes() == b"keep!"


def test_a_failing_run_removes_only_its_own_directory(tmp_path, monkeypatch):
  docs, _ = small_corpus(tmp_path, 2, [])
  (tmp_path / "out").mkdir()  # Empty: may be written, and must stay if the run fails.
  around = sorted(os.listdir(tmp_path))

  def broken(self, unit):
    raise RuntimeError("a bug in a converter")

  monkeypatch.setattr(Converter, "convert", broken)
  with pytest.raises(RuntimeError, match="a bug in a converter"):
    convert("jsonl", [docs], tmp_path / "out", corpus.limits(tmp_path / "media"))
  assert sorted(os.listdir(tmp_path)) == around and os.listdir(tmp_path / "out") == []


def test_out_may_be_a_link_to_an_empty_directory(tmp_path):
  docs, expected = small_corpus(tmp_path, 2, ["bad_json"])
  (tmp_path / "real").mkdir()
  os.symlink("real", tmp_path / "link")
  summary = convert("jsonl", [docs], tmp_path / "link", corpus.limits(tmp_path / "media"))
  check(summary, tmp_path / "real", expected)
  assert os.readlink(tmp_path / "link") == "real"
