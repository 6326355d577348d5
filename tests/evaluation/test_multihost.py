"""Multi-host evaluation (flamingo_jax/evaluation/hosts.py): the evaluate CLI as two processes on
localhost (gloo, 4 CPU devices each) writes what one process on 4 devices writes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines import records
from experiments import flamingo as flamingo_presets
from flamingo_jax.config import Config, EvaluationConfig
from flamingo_jax.evaluation import hosts
from tests.builders import trained_run
from tests.data.builders import jpeg, write_shard

SUPPORT = 70  # Two RICES feature batches (rices.BATCH_SIZE = 64): one per process.
QUERIES = 5  # Three batches of 2: process 0 runs queries 0-3, process 1 query 4 (padded).


@pytest.mark.parametrize("num_processes, shares", [
    (2, [range(0, 4), range(4, 5)]),  # Batches [0, 1] and [2]: whole batches of one process.
    (4, [range(0, 2), range(2, 4), range(4, 5), range(5, 5)]),  # A process past the last batch.
])
def test_processes_share_whole_batches(monkeypatch, num_processes, shares):
  monkeypatch.setattr(jax, "process_count", lambda: num_processes)
  got = []
  for index in range(num_processes):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    got.append(hosts.share(QUERIES, batch_size=2))
  assert got == shares


def _corpus(root):
  """A demo-format corpus: SUPPORT training and QUERIES held-out pairs of random images, captions
  naming red or blue (the classification task's classes)."""
  for split, count, seed in (("train", SUPPORT, 0), ("eval", QUERIES, 1000)):
    words = np.random.default_rng(seed).choice(["dog", "cat", "man", "table", "two"], count)
    write_shard(os.path.join(root, split, "pairs"), "pairs", [
        records.pair(f"{split}{i}", jpeg(seed + i), f"a {('red', 'blue')[i % 2]} {words[i]}")
        for i in range(count)])


def _settings(corpus) -> EvaluationConfig:
  """Captioning with RICES shots (generate) and a two-class task (score, ROC-AUC, two orders)."""
  demo = dict(source="demo", data_dir=str(corpus), support_split="train", query_split="eval",
              num_queries=QUERIES)
  return EvaluationConfig.from_dict(dict(
      seed=0, shots=(2,), batch_size=2, pad_to_multiple=64,
      sampling=dict(strategy="greedy", max_new_tokens=4), tasks=dict(
          captions=dict(kind="captioning", prompt="<image>Output: {answer}<EOC>",
                        support_size=SUPPORT, selection="rices", **demo),
          colours=dict(kind="classification", prompt="<image>a {answer}<EOC>", support_size=8,
                       class_names=("red", "blue"), num_permutations=2, **demo))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _evaluate(config_file, run, workdir, *extra, env):
  return subprocess.Popen(
      [sys.executable, "-m", "flamingo_jax.evaluation.evaluate", f"--config={config_file}",
       f"--checkpoint={run}", f"--workdir={workdir}", *extra],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _without_seconds(results: dict) -> dict:
  for task in results["tasks"].values():
    del task["seconds"]
  return results


def test_two_processes_equal_one_process(tmp_path, tokenizer):
  """Every batch a process runs is one the single process runs, on the same 4-device mesh: the
  scores, intervals, every query's prediction and the RICES features are equal bit for bit."""
  config = Config.from_dict(flamingo_presets.get_config("tiny")).replace(
      {"data.tokenizer": tokenizer.model_path, "model.lm.vocab_size": tokenizer.vocab_size})
  trained_run(str(tmp_path / "run"), config)
  _corpus(tmp_path / "corpus")
  config_file = tmp_path / "evaluation.py"
  config_file.write_text("import ml_collections\n\ndef get_config():\n  return "
                         f"ml_collections.ConfigDict({_settings(tmp_path / 'corpus').to_dict()!r})\n")
  env = dict(os.environ, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4"))
  address = f"--coordinator_address=localhost:{_free_port()}"
  procs = [_evaluate(config_file, tmp_path / "run", tmp_path / "two", address, "--num_processes=2",
                     f"--process_id={i}", env=env) for i in range(2)]
  procs.append(_evaluate(config_file, tmp_path / "run", tmp_path / "one", env=env))
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  one, two = tmp_path / "one", tmp_path / "two"
  results = _without_seconds(json.loads((one / "results.json").read_text()))
  assert _without_seconds(json.loads((two / "results.json").read_text())) == results
  assert (two / "results.md").read_text() == (one / "results.md").read_text()
  predictions = json.loads((one / "predictions.json").read_text())
  assert json.loads((two / "predictions.json").read_text()) == predictions
  assert len(predictions["captions"]["2"]) == QUERIES
  assert np.shape(predictions["colours"]["2"]) == (QUERIES, 2)  # Each class's log-likelihood.
  assert sorted(os.listdir(two / "rices")) == sorted(os.listdir(one / "rices"))
  assert len(os.listdir(one / "rices")) == 2  # The captions' support and query features.
  for name in os.listdir(one / "rices"):
    np.testing.assert_array_equal(np.load(two / "rices" / name), np.load(one / "rices" / name))
  table = (one / "results.md").read_text().splitlines()[0]
  assert [out.count(table) for out in outputs] == [1, 0, 1]  # Process 0 prints the table.


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2"], "error: --num_processes=2 needs --coordinator_address=host:port"),
    (["--mesh=1,-1,3"], "error: 4 devices cannot be split into mesh axes"),
])
def test_bad_process_or_mesh_flags_are_one_line_errors(tmp_path, flags, message):
  settings = EvaluationConfig.from_dict(dict(tasks=dict(captions=dict(source="demo"))))
  config_file = tmp_path / "evaluation.py"
  config_file.write_text("import ml_collections\n\ndef get_config():\n  return "
                         f"ml_collections.ConfigDict({settings.to_dict()!r})\n")
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8",
                                                                    "device_count=4"))
  out = _evaluate(config_file, tmp_path / "run", tmp_path / "out", *flags, env=env).communicate(
      timeout=120)[0]
  assert message in out and "Traceback" not in out, out
