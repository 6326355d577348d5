"""Golden tests of the few-shot harness: a stub model with known outputs (`runner.ModelCalls`)
drives shot selection, RICES, prompts, padded batches, prompt ensembling and the metrics to exact
scores.

Every image is one grey level that names its example (`_level`), so the stub reads each prompt row
back as (text, image names). Its rules:
* generate: the answer of the prompt's last shot (the text between its last ": " and "<EOC>");
* score: a candidate's score is the 1-based position of the last shot that answered it, 0 if none;
* RICES features: a table by image.
"""

import dataclasses
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipelines import records
from data_pipelines.eval_sets import load_image
from flamingo_jax.config import EvaluationConfig
from flamingo_jax.evaluation import evaluate, rices
from flamingo_jax.evaluation import runner as runner_lib
from tests.builders import tiny_config

BASES = {"t": 20, "s": 100, "q": 200}  # Example "<prefix><i>" has grey level BASES[prefix] + 5 i.
CAPTION = "<image>Output: {answer}<EOC>"
VQA = "<image>Question: {question} Answer: {answer}<EOC>"


def _level(name: str) -> int:
  return BASES[name[0]] + 5 * int(name[1:])


def _name(level) -> str:
  """The example of a grey level (a JPEG may move it by 1 or 2)."""
  prefix = max((p for p in BASES if BASES[p] <= int(level) + 2), key=BASES.get)
  return f"{prefix}{round((int(level) - BASES[prefix]) / 5)}"


def _image(name: str, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((40, 48, 3), _level(name), np.uint8)).save(buffer, format=fmt)
  return buffer.getvalue()


def _answers(text: str) -> list[str]:
  """The answers the shots of a prompt show, in order."""
  return re.findall(r": ([^:<]*)<EOC>", text)


class StubModel:
  """A model with known outputs (the module docstring's rules) that records every prompt row it
  sees as (text after BOS, image names) in `rows`, padding rows included."""

  def __init__(self, tokenizer, features=None):
    self.tokenizer, self.table, self.rows = tokenizer, features or {}, []
    self.feature_calls = 0

  def calls(self) -> runner_lib.ModelCalls:
    return runner_lib.ModelCalls(self.generate, self.score, self.features)

  def _read(self, tokens, mask, images) -> list[tuple[str, tuple[str, ...]]]:
    rows = []
    for b in range(len(tokens)):
      text = self.tokenizer.decode(tokens[b][mask[b]][1:])
      rows.append((text, tuple(_name(images[b, k, 0, 0, 0, 0])
                               for k in range(text.count("<image>")))))
    self.rows += rows
    return rows

  def generate(self, config, params, tokens, mask, images, sampling, stop_tokens):
    replies = [self.tokenizer.encode(_answers(text)[-1]) for text, _ in
               self._read(tokens, mask, images)]
    new = np.full((len(replies), sampling.max_new_tokens), stop_tokens[0], np.int32)
    for b, ids in enumerate(replies):
      new[b, :len(ids)] = ids
    return new, np.asarray([len(ids) for ids in replies], np.int32)

  def score(self, config, params, tokens, mask, images, candidates, candidate_mask):
    out = np.zeros(candidates.shape[:2], np.float32)
    for b, (text, _) in enumerate(self._read(tokens, mask, images)):
      shown = _answers(text)
      for c in range(candidates.shape[1]):
        name = self.tokenizer.decode(candidates[b, c][candidate_mask[b, c]]).removesuffix("<EOC>")
        out[b, c] = max((i + 1 for i, a in enumerate(shown) if a == name), default=0)
    return out

  def features(self, config, vision_params, examples):
    self.feature_calls += 1
    return np.asarray([self.table[_name(load_image(ex, 8)[0, 0, 0])] for ex in examples])


# ------------------------------------------------------------------------------------------- data

def _demo_split(root, split: str, rows, images=None):
  """A demo-format split (data_pipelines/demo.py's pairs): (name, caption) rows; the images of
  `images` names (default: the rows' own)."""
  with records.ShardWriter(os.path.join(root, split, "pairs"), "pairs") as writer:
    for (name, caption), image in zip(rows, images or [name for name, _ in rows]):
      writer.write(records.pair(name, _image(image), caption))


def _vqa_split(root, split: str, rows):
  """VQAv2's official files (questions, annotations, COCO_<split>2014_<id>.jpg) of (name,
  question, answers) rows; an example's image id is its grey level."""
  short = {"train": "train", "validation": "val"}[split]
  os.makedirs(os.path.join(root, f"{short}2014"))
  for name, _, _ in rows:
    with open(os.path.join(root, f"{short}2014", f"COCO_{short}2014_{_level(name):012d}.jpg"),
              "wb") as f:
      f.write(_image(name, "JPEG"))
  questions = [{"image_id": _level(n), "question": q, "question_id": _level(n)} for n, q, _ in rows]
  annotations = [{"question_id": _level(n), "image_id": _level(n),
                  "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]}
                 for n, _, answers in rows]
  with open(os.path.join(root, f"v2_OpenEnded_mscoco_{short}2014_questions.json"), "w") as f:
    json.dump({"questions": questions}, f)
  with open(os.path.join(root, f"v2_mscoco_{short}2014_annotations.json"), "w") as f:
    json.dump({"annotations": annotations}, f)


def _settings(shots, batch_size, **tasks) -> EvaluationConfig:
  return EvaluationConfig.from_dict(dict(
      seed=0, shots=shots, batch_size=batch_size, pad_to_multiple=8,
      sampling=dict(strategy="greedy", max_new_tokens=32), tasks=tasks))


def _demo_task(root, kind, support_size, num_queries, **fields) -> dict:
  return dict(kind=kind, source="demo", data_dir=str(root), support_split="train",
              query_split="eval", support_size=support_size, num_queries=num_queries,
              prompt=CAPTION, **fields)


_PARAMS = {"vision": {"w": np.zeros(2, np.float32)}}  # Only RICES' cache key reads them.


def _model(tokenizer):
  return tiny_config(**{"lm.vocab_size": tokenizer.vocab_size})


def _runner(name, settings, stub, tokenizer, cache_dir) -> runner_lib.TaskRunner:
  return runner_lib.TaskRunner(name, settings.tasks[name], settings, _model(tokenizer), _PARAMS,
                               tokenizer, str(cache_dir), lambda _: None, stub.calls())


def _with_answers_of_next_query(runner):
  """The bug to catch: query q scored against the references of query q + 1 (cyclically)."""
  queries = runner.queries
  runner.queries = [dataclasses.replace(ex, answers=queries[(q + 1) % len(queries)].answers,
                                        label=queries[(q + 1) % len(queries)].label)
                    for q, ex in enumerate(queries)]


# ----------------------------------------------------------------------------------- captioning

SUPPORT = [("s0", "a red seven"), ("s1", "a blue two"), ("s2", "a green one"),
           ("s3", "a yellow nine"), ("s4", "a red four")]
QUERIES = [("q0", "a yellow nine"), ("q1", "a blue two"), ("q2", "a yellow nine")]


@pytest.fixture
def captions(tmp_path):
  _demo_split(tmp_path / "demo", "train", SUPPORT)
  _demo_split(tmp_path / "demo", "eval", QUERIES)
  return _settings((0, 2), 2, captions=_demo_task(tmp_path / "demo", "captioning", 5, 3))


def test_captioning_scores_exactly(tmp_path, captions, tokenizer):
  stub = StubModel(tokenizer)
  results = evaluate.evaluate(captions, _model(tokenizer), _PARAMS, tokenizer,
                              str(tmp_path / "out"), lambda _: None, stub.calls())
  # Seed 0: 0 shots show support [3, 4] / [2, 4] / [0, 3] text only; 2 shots (seed 0 + 2) show
  # [1, 3] / [4, 1] / [4, 2]; batches of 2, the last padded with a copy of query 2.
  text_only = {"q0": ("a yellow nine", "a red four"), "q1": ("a green one", "a red four"),
               "q2": ("a red seven", "a yellow nine")}
  shots = {"q0": ("s1", "s3"), "q1": ("s4", "s1"), "q2": ("s4", "s2")}
  caption = dict(SUPPORT)
  expected = [("".join(f"Output: {c}<EOC>" for c in text_only[q]) + "<image>Output:", (q,))
              for q in ("q0", "q1", "q2", "q2")]
  expected += [("".join(f"<image>Output: {caption[s]}<EOC>" for s in shots[q]) + "<image>Output:",
                (*shots[q], q)) for q in ("q0", "q1", "q2", "q2")]
  assert stub.rows == expected
  # The stub answers its last shot's caption. 0 shots: "a red four", "a red four", "a yellow nine":
  # query 2 matches exactly. 2 shots: "a yellow nine", "a blue two", "a green one": queries 0 and
  # 1 match. An exact match of 3 words scores (1 + 1 + 1 + 0) / 4 x 10 = 7.5 (no 4-gram), the
  # others 0 ("a" is in every reference: idf 0): CIDEr 7.5 / 3 and 15 / 3, x100.
  task = results["tasks"]["captions"]
  assert task["scores"] == {"0": pytest.approx(250), "2": pytest.approx(500)}
  assert (task["metric"], task["num_queries"], task["num_support"]) == ("cider", 3, 5)
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["tasks"]["captions"]["scores"] == task["scores"]
  # 95% intervals: mean +- 1.96 x s / sqrt(3), s = 433.0 at both shot counts; 0 is the floor.
  assert task["intervals"] == {"0": [0.0, pytest.approx(739.99, abs=0.01)],
                               "2": [pytest.approx(10.01, abs=0.01), pytest.approx(989.99, abs=0.01)]}
  assert (tmp_path / "out" / "results.md").read_text().splitlines()[:4] == [
      "| shots | captions (CIDEr) |", "|---|---|", "| 0 | 250.0 (0.0-740.0) |",
      "| 2 | 500.0 (10.0-990.0) |"]


def test_captions_paired_with_the_wrong_references_fail(tmp_path, captions, tokenizer):
  runner = _runner("captions", captions, StubModel(tokenizer), tokenizer, tmp_path)
  assert runner.run(2).value == pytest.approx(500)
  _with_answers_of_next_query(runner)
  # "a yellow nine" / "a blue two" / "a green one" against "a blue two" / "a yellow nine" / "a
  # yellow nine": no match.
  assert runner.run(2).value == 0


# ------------------------------------------------------------------------------------- VQA, RICES

ANGLES = {"s0": 0, "s1": 40, "s2": 90, "s3": 150, "q0": 10, "q1": 70, "q2": 130}  # Degrees.
DIRECTIONS = {n: [np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))] for n, a in ANGLES.items()}
VQA_SUPPORT = [("s0", "what colour?", ["red"] * 10), ("s1", "how many?", ["two"] * 9 + ["3"]),
               ("s2", "what colour?", ["blue"] * 10), ("s3", "is it a cat?", ["yes"] * 10)]
VQA_QUERIES = [("q0", "what colour?", ["red"] * 10),
               ("q1", "what colour?", ["blue"] * 2 + ["two"] * 8),
               ("q2", "is it a dog?", ["yes"] + ["no"] * 9)]


@pytest.fixture
def vqa(tmp_path):
  _vqa_split(tmp_path / "files", "train", VQA_SUPPORT)
  _vqa_split(tmp_path / "files", "validation", VQA_QUERIES)
  return _settings((0, 2), 2, vqav2=dict(
      kind="vqa", tfds_name="flamingo_eval_files/vqav2", data_dir=str(tmp_path / "tfds"),
      manual_dir=str(tmp_path / "files"), support_size=4, num_queries=3, prompt=VQA,
      selection="rices"))


def test_vqa_with_rices_scores_exactly(tmp_path, vqa, tokenizer):
  stub = StubModel(tokenizer, DIRECTIONS)
  runner = _runner("vqav2", vqa, stub, tokenizer, tmp_path / "rices")
  # tfds orders a split by a hash of the keys (the question ids).
  assert [_name(ex.image[0, 0, 0]) for ex in runner.support] == ["s1", "s2", "s0", "s3"]
  assert [_name(ex.image[0, 0, 0]) for ex in runner.queries] == ["q1", "q2", "q0"]
  # 0 shots (seed 0): support [2, 3] / [1, 3] / [0, 2], text only; batches of 2, the last padded
  # with a copy of q0. The stub answers the last shot's majority answer: "yes" (0 of q1's 10
  # humans: 0), "yes" (1 of 10: each left-out set of 9 holds it once or not: (9 x 1/3) / 10 = 0.3),
  # "red" (10 of 10: 1).
  assert runner.run(0).value == pytest.approx(100 * 1.3 / 3)
  # 2 shots: the 2 nearest by angle, most similar last: q1 (70) s1 (30 away), s2 (20); q2 (130) s2
  # (40), s3 (20); q0 (10) s1 (30), s0 (10). Answers "blue" (2 of 10: (2 x 1/3 + 8 x 2/3) / 10 =
  # 0.6), "yes" (0.3), "red" (1).
  assert runner.run(2).value == pytest.approx(100 * 1.9 / 3)
  assert [names for _, names in stub.rows] == [
      ("q1",), ("q2",), ("q0",), ("q0",),
      ("s1", "s2", "q1"), ("s2", "s3", "q2"), ("s1", "s0", "q0"), ("s1", "s0", "q0")]
  assert [text for text, _ in stub.rows[:3]] == [
      ("Question: what colour? Answer: red<EOC>Question: is it a cat? Answer: yes<EOC>"
       "<image>Question: what colour? Answer:"),
      ("Question: what colour? Answer: blue<EOC>Question: is it a cat? Answer: yes<EOC>"
       "<image>Question: is it a dog? Answer:"),
      ("Question: how many? Answer: two<EOC>Question: what colour? Answer: red<EOC>"
       "<image>Question: what colour? Answer:")]
  assert stub.rows[4][0] == ("<image>Question: how many? Answer: two<EOC><image>Question: what "
                             "colour? Answer: blue<EOC><image>Question: what colour? Answer:")
  # <task>-<split>[:<n>]-<data>-<model>.npy
  assert sorted(name.rsplit("_", 2)[0] for name in os.listdir(tmp_path / "rices")) == [
      "vqav2_train_4", "vqav2_validation_3"]
  assert stub.feature_calls == 2


def test_vqa_with_most_similar_first_or_the_wrong_answers_fails(tmp_path, vqa, tokenizer,
                                                                monkeypatch):
  runner = _runner("vqav2", vqa, StubModel(tokenizer, DIRECTIONS), tokenizer, tmp_path)
  assert runner.run(2).value == pytest.approx(100 * 1.9 / 3)
  _with_answers_of_next_query(runner)
  assert runner.run(2).value == 0  # "blue" vs "yes" / "no", "yes" vs "red", "red" vs "blue" / "two".
  runner = _runner("vqav2", vqa, StubModel(tokenizer, DIRECTIONS), tokenizer, tmp_path)
  nearest = rices.most_similar
  monkeypatch.setattr(rices, "most_similar", lambda *args: nearest(*args)[:, ::-1])
  assert runner.run(2).value == pytest.approx(100 / 3)  # "two", "blue", "two": 1, 0, 0.


# --------------------------------------------------------------------- classification, ensembling

CLASS_SUPPORT = [("s0", "a red cat"), ("s1", "a green cat"), ("s2", "a blue cat"),
                 ("s3", "a red dog"), ("s4", "a green dog"), ("s5", "a blue dog")]
CLASS_QUERIES = [("q0", "a green fish"), ("q1", "a blue bird"), ("q2", "a red fish"),
                 ("q3", "a blue fish")]


@pytest.fixture
def colours(tmp_path):
  _demo_split(tmp_path / "demo", "train", CLASS_SUPPORT)
  _demo_split(tmp_path / "demo", "eval", CLASS_QUERIES)
  return _settings((0, 4), 3, colours=_demo_task(
      tmp_path / "demo", "classification", 6, 4, class_names=("red", "green", "blue"),
      num_permutations=2))


def test_classification_with_prompt_ensembling_scores_exactly(tmp_path, colours, tokenizer):
  stub = StubModel(tokenizer)
  runner = _runner("colours", colours, stub, tokenizer, tmp_path)
  # 0 shots (seed 0): [s4, s3] / [s2, s5] / [s0, s4] / [s2, s5], text only; the last shot showing a
  # class scores highest: red, blue, green, blue against green, blue, red, blue.
  assert runner.run(0).value == 50
  # 4 shots (seed 0 + 4) in the orders (0, 1, 2, 3) and (3, 0, 1, 2); batches of 3, the last
  # padded with two copies of q3.
  shots = {"q0": ("s2", "s3", "s4", "s5"), "q1": ("s0", "s3", "s1", "s2"),
           "q2": ("s5", "s4", "s0", "s2"), "q3": ("s1", "s2", "s5", "s0")}
  stub.rows.clear()
  # Scores (red, green, blue) summed over the orders: q0 (2, 3, 4) + (3, 4, 2) -> green; q1 (2, 3,
  # 4) + (3, 4, 1) -> green; q2 (3, 2, 4) + (4, 3, 2) -> red; q3 (4, 1, 3) + (1, 2, 4) -> blue.
  assert runner.run(4).value == 75
  assert [names for _, names in stub.rows] == [
      (*(shots[q][i] for i in order), q) for order in ((0, 1, 2, 3), (3, 0, 1, 2))
      for q in ("q0", "q1", "q2", "q3", "q3", "q3")]
  assert stub.rows[0][0] == ("<image>Output: blue<EOC><image>Output: red<EOC><image>Output: green"
                             "<EOC><image>Output: blue<EOC><image>Output:")
  _with_answers_of_next_query(runner)
  assert runner.run(4).value == 0  # green, green, red, blue against blue, red, blue, green.


def test_classification_without_ensembling_scores_exactly(tmp_path, colours, tokenizer):
  settings = colours.replace({"tasks.colours.num_permutations": 1})
  runner = _runner("colours", settings, StubModel(tokenizer), tokenizer, tmp_path)
  assert runner.run(4).value == 25  # The identity order alone: blue, blue, blue, red.


def test_two_classes_score_roc_auc_exactly(tmp_path, tokenizer):
  _demo_split(tmp_path / "demo", "train", [("s0", "it says yes"), ("s1", "it says no"),
                                           ("s2", "it says yes"), ("s3", "it says no")])
  _demo_split(tmp_path / "demo", "eval", [("q0", "it says yes"), ("q1", "it says no"),
                                          ("q2", "it says no"), ("q3", "it says yes")])
  settings = _settings((2,), 4, memes=_demo_task(tmp_path / "demo", "classification", 4, 4,
                                                 class_names=("no", "yes")))
  runner = _runner("memes", settings, StubModel(tokenizer), tokenizer, tmp_path)
  # 2 shots (seed 2): [s1, s2] / [s3, s0] / [s3, s1] / [s1, s2]: score(yes) - score(no) = 1, 1, -2,
  # 1. Positives q0, q3 (1, 1) against negatives q1 (1: a tie, 1/2), q2 (-2: 1): AUC 3/4.
  assert runner.metric == "roc_auc" and runner.run(2).value == 75
  _with_answers_of_next_query(runner)
  assert runner.run(2).value == 25  # Positives q2 (-2), q3 (1) against q0, q1 (1, 1): 1/4.


# ------------------------------------------------------------------------------------ RICES cache

def test_rices_cache_is_keyed_by_the_data(tmp_path, tokenizer):
  """Corpora a and b have the same task name, splits, sizes and example keys but other support
  images: they never share cached features; c (a copied elsewhere) reads a's."""
  support, query = [("s0", "a red cat"), ("s1", "a blue cat")], [("q0", "a red dog")]
  _demo_split(tmp_path / "a", "train", support)
  _demo_split(tmp_path / "b", "train", support, images=["t0", "t1"])
  for corpus in "ab":
    _demo_split(tmp_path / corpus, "eval", query)
  shutil.copytree(tmp_path / "a", tmp_path / "c")
  table = {"s0": [1.0, 0.0], "s1": [0.0, 1.0], "t0": [0.5, 0.25], "t1": [0.25, 0.5],
           "q0": [1.0, 0.0]}
  stub, features = StubModel(tokenizer, table), {}
  for corpus in "abc":
    settings = _settings((1,), 1, captions=_demo_task(tmp_path / corpus, "captioning", 2, 1,
                                                      selection="rices"))
    runner = _runner("captions", settings, stub, tokenizer, tmp_path / "cache")
    features[corpus] = runner.support_features.tolist()
  assert features == {"a": [[1.0, 0.0], [0.0, 1.0]], "b": [[0.5, 0.25], [0.25, 0.5]],
                      "c": [[1.0, 0.0], [0.0, 1.0]]}
  # a: support and query; b: its support (its query is a's); c: nothing.
  assert stub.feature_calls == 3 and len(os.listdir(tmp_path / "cache")) == 3
