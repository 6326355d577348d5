"""Metric parity: PTB tokenisation and CIDEr-D vs pycocoevalcap with Java (golden files), VQA
accuracy vs the official evaluation's outputs, ROC-AUC and top-1 vs scikit-learn."""

import json
import pathlib

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from sklearn.metrics import roc_auc_score

from flamingo_jax.evaluation import metrics as eval_metrics

# Made with the real tools by tests/evaluation/golden/make_ptb_golden.py and
# make_vqa_python2_golden.py.
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"

# (prediction, the ten human answers, official accuracy in percent). The accuracies are the official
# GT-Vision-Lab/VQA evaluation's (commit a013f00) evalQA values; tests/evaluation/vqa_reference_values.py
# recomputes them (its docstring has the commands).
VQA_CASES = [
    ('two', ('2', '2', '2', 'two', '2', '3', '2', '2', '2', '2'), 100.0),
    ('Two', ('two', 'two', 'two', 'two', 'two', 'two', 'two', 'two', 'two', 'two'), 0.0),
    ('2', ('two', 'two', 'two', 'two', 'two', 'two', 'two', 'two', 'two', 'two'), 0.0),
    ('yes', ('yes', 'yes', 'no', 'yes', 'yes', 'no', 'yes', 'yes', 'yes', 'yes'), 100.0),
    ('no', ('yes', 'yes', 'no', 'yes', 'yes', 'no', 'yes', 'yes', 'yes', 'yes'), 60.0),
    ('the dog.',
     ('dog', 'dogs', 'a dog', 'dog', 'puppy', 'dog', 'dog', 'the dog', 'dog', 'dog'),
     100.0),
    ('A red, bus!',
     ('red bus', 'red bus', 'bus', 'red-bus', 'red bus', 'red bus', 'double decker', 'red bus',
     'bus', 'red bus'),
     100.0),
    ('dont know',
     ("don't know", 'dont know', 'unknown', 'dont know', "don't know", 'no idea', 'not sure',
     'dont know', 'dont know', 'unanswerable'),
     100.0),
    ('1,000',
     ('1000', '1,000', '1000', '1 000', '1000', 'thousand', '1000', '1000', '1,000', '1000'),
     100.0),
    ('3.5', ('3.5', '3.5', '3.50', '3', '4', '3.5', '3.5', 'three and half', '3.5', '3.5'), 100.0),
    ('  tennis\tracket ',
     ('tennis racket', 'tennis racquet', 'racket', 'tennis racket', 'tennis racket', 'racket',
     'tennis racket', 'tennis racket', 'racquet', 'tennis racket'),
     100.0),
    ('hes running',
     ("he's running", 'running', 'he is running', 'hes running', 'running', 'running', 'jogging',
     'running', "he's running", 'running'),
     90.0),
    ('mr. smith',
     ('mr smith', 'mr. smith', 'smith', 'mr smith', 'mr. smith', 'mr smith', 'mr smith', 'smith',
     'mr. smith', 'mr smith'),
     100.0),
    ('left/right',
     ('left', 'right', 'left right', 'left/right', 'left', 'left', 'right', 'left/right', 'both',
     'left'),
     90.0),
    ('cat', ('dog', 'dog', 'dog', 'dog', 'dog', 'dog', 'dog', 'dog', 'dog', 'dog'), 0.0),
    ('ten', ('10', '10', '10', 'ten', '10', '10', '11', '10', '10', '10'), 100.0),
    ('bus',
     ('red bus', 'red bus', 'bus', 'red-bus', 'red bus', 'red bus', 'double decker', 'red bus',
     'bus', 'red bus'),
     60.0),
    ('racket',
     ('tennis racket', 'tennis racquet', 'racket', 'tennis racket', 'tennis racket', 'racket',
     'tennis racket', 'tennis racket', 'racquet', 'tennis racket'),
     60.0),
    ('running',
     ("he's running", 'running', 'he is running', 'hes running', 'running', 'running', 'jogging',
     'running', "he's running", 'running'),
     100.0),
    ('left right',
     ('left', 'right', 'left right', 'left/right', 'left', 'left', 'right', 'left/right', 'both',
     'left'),
     90.0),
    ('3', ('3.5', '3.5', '3.50', '3', '4', '3.5', '3.5', 'three and half', '3.5', '3.5'), 30.0),
    ('unanswerable',
     ("don't know", 'dont know', 'unknown', 'dont know', "don't know", 'no idea', 'not sure',
     'dont know', 'dont know', 'unanswerable'),
     30.0),
    ('dogs', ('dog', 'dogs', 'a dog', 'dog', 'puppy', 'dog', 'dog', 'the dog', 'dog', 'dog'), 30.0),
    ('red-bus',
     ('red bus', 'red bus', 'bus', 'red-bus', 'red bus', 'red bus', 'double decker', 'red bus',
     'bus', 'red bus'),
     100.0),
]


def test_vqa_accuracy_equals_the_official_evaluation():
  ours = [100 * eval_metrics.vqa_accuracy(p, answers) for p, answers, _ in VQA_CASES]
  np.testing.assert_allclose(ours, [expected for _, _, expected in VQA_CASES], atol=1e-6)


def test_vqa_normalisation():
  assert eval_metrics.normalize_vqa_answer(" Two dogs!\n") == "2 dogs"
  assert eval_metrics.normalize_vqa_answer("the cat's toy.") == "cat's toy"
  assert eval_metrics.normalize_vqa_answer("1,000") == "1000"
  assert eval_metrics.normalize_vqa_answer("dont") == "don't"
  with pytest.raises(ValueError, match="no ground-truth"):
    eval_metrics.vqa_accuracy("yes", [])


def test_vqa_non_ascii_answers_are_normalised_as_the_official_python2_code():
  # Python 3 would give "٣.٥", "١٠٠٠ dogs", "i̇stanbul" and "οδος".
  assert eval_metrics.normalize_vqa_answer("\u0663.\u0665") == "\u0663\u0665"
  assert (eval_metrics.normalize_vqa_answer("\u0661,\u0660\u0660\u0660 dogs")
          == "\u0661 \u0660\u0660\u0660 dogs")
  assert eval_metrics.normalize_vqa_answer("\u0130stanbul") == "istanbul"
  assert eval_metrics.normalize_vqa_answer("\u039f\u0394\u039f\u03a3") == "\u03bf\u03b4\u03bf\u03c3"
  cases = json.loads((GOLDEN / "vqa_non_ascii.json").read_text(encoding="utf-8"))
  ours = [100 * eval_metrics.vqa_accuracy(case["prediction"], case["answers"]) for case in cases]
  np.testing.assert_allclose(ours, [case["accuracy"] for case in cases], atol=1e-9)


def _random_captions(rng, words, count, length=(3, 12)):
  return [" ".join(rng.choice(words, rng.integers(*length))) for _ in range(count)]


def test_cider_d_equals_pycocoevalcap():
  rng = np.random.default_rng(0)
  words = np.array("a the dog cat man woman red blue sits on runs with ball table grass street "
                   "two some near of in".split())
  refs = {f"img{i}": _random_captions(rng, words, int(rng.integers(1, 6))) for i in range(40)}
  cands = {i: _random_captions(rng, words, 1)[0] for i in refs}
  cands["img0"] = refs["img0"][0]  # An exact match and an empty candidate are edge cases.
  cands["img1"] = ""
  expected, expected_each = Cider().compute_score(refs, {i: [c] for i, c in cands.items()})
  ours, ours_each = eval_metrics.cider_d(refs, cands)
  np.testing.assert_allclose(ours, expected, rtol=1e-12)
  np.testing.assert_allclose([ours_each[i] for i in refs], expected_each, rtol=1e-12, atol=1e-15)
  assert ours_each["img0"] > ours_each["img2"]


def test_cider_d_rejects_mismatched_ids():
  with pytest.raises(ValueError, match="same ids"):
    eval_metrics.cider_d({"a": ["x"]}, {"b": "x"})


def test_caption_tokenisation_examples():
  captions = ["A man in a T-shirt (red) holds a 3.5 lb sign.",
              "1,000 people in the U.S. at 10:30 and/or later.",
              "I don\u2019t know, it\u2019s \u201cgreat\u201d -- they cannot go \u2014 gonna "
              "stay\u2026",
              "A dog \U0001f436 on a skate-board; price: $5, \u00a33 or \u20ac2 \u00bd.",
              "Mr. Smith's caf\u00e9 is at www.example.com :)", "I saw Z.", "A dog."]
  assert eval_metrics.tokenize_captions(captions) == [
      "a man in a t-shirt -lrb- red -rrb- holds a 3.5 lb sign",
      "1,000 people in the u.s. at 10:30 and/or later",
      "i do n't know it 's great they can not go gon na stay",
      "a dog on a skate-board price $ 5 # 3 or $ 2 1/2",
      "mr. smith 's caf\u00e9 is at www.example.com :-rrb-", "i saw z", "a dog"]
  # The lexer looks ahead across a caption's end: alone (last), "Z." and ":)" tokenise otherwise.
  assert eval_metrics.tokenize_caption("I saw Z.") == "i saw z."
  assert eval_metrics.tokenize_caption("a smile :)") == "a smile -rrb-"
  # Deliberately unlike pycocoevalcap, which would shift the later captions by a line.
  assert eval_metrics.tokenize_captions(["a\rdog\u2028runs", "next"]) == ["a dog runs", "next"]


def test_ptb_tokenisation_equals_the_java_tokenizer_on_the_golden_captions():
  golden = json.loads((GOLDEN / "ptb_captions.json").read_text(encoding="utf-8"))
  ours = eval_metrics.tokenize_captions(golden["captions"])
  differing = [(caption, java, mine) for caption, java, mine
               in zip(golden["captions"], golden["tokens"], ours) if java != mine]
  assert len(golden["captions"]) > 7000
  assert differing == []


def test_cider_d_end_to_end_equals_pycocoevalcap_with_java():
  golden = json.loads((GOLDEN / "cider_d.json").read_text(encoding="utf-8"))
  captions = json.loads((GOLDEN / "ptb_captions.json").read_text(encoding="utf-8"))["captions"]
  k, num_images = golden["references_per_image"], golden["images"]
  images = [captions[i * (k + 1):(i + 1) * (k + 1)] for i in range(num_images)]
  # cider_d_of_texts tokenises as COCOEvalCap.evaluate: references in one call, candidates in another.
  score, scores = eval_metrics.cider_d_of_texts([image[:k] for image in images],
                                                [image[k] for image in images])
  assert abs(score - golden["score"]) < 1e-9
  np.testing.assert_allclose([scores[i] for i in range(num_images)], golden["scores"], rtol=0,
                             atol=1e-9)


def test_roc_auc_and_top1_equal_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # Rounded: ties across the classes.
  np.testing.assert_allclose(eval_metrics.roc_auc(labels, scores), roc_auc_score(labels, scores),
                             rtol=1e-12)
  logits = rng.normal(size=(50, 7))
  targets = rng.integers(0, 7, 50)
  assert eval_metrics.top1(logits, targets) == np.mean(logits.argmax(-1) == targets)
  with pytest.raises(ValueError, match="both classes"):
    eval_metrics.roc_auc([1, 1], [0.2, 0.3])


def test_95_percent_intervals():
  # Wilson score intervals as published (e.g. Newcombe 1998): 8/10, 0/10, 50/100.
  np.testing.assert_allclose(eval_metrics.wilson_interval(8, 10), (0.4902, 0.9433), atol=1e-4)
  np.testing.assert_allclose(eval_metrics.wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
  np.testing.assert_allclose(eval_metrics.wilson_interval(50, 100), (0.4038, 0.5962), atol=1e-4)
  # Mean +- 1.96 s / sqrt(n): s = 1.2910 for 1..4; the low end of a non-negative metric stops at 0.
  np.testing.assert_allclose(eval_metrics.mean_interval([1, 2, 3, 4]), (1.2349, 3.7651), atol=1e-4)
  np.testing.assert_allclose(eval_metrics.mean_interval([0, 0, 3]), (0.0, 2.96), atol=1e-3)
  # Hanley-McNeil: AUC 0.75 with 2 positives and 2 negatives: Q1 = 0.6, Q2 = 0.6429, SE = 0.2763.
  np.testing.assert_allclose(eval_metrics.roc_auc_interval(0.75, 2, 2), (0.2085, 1.0), atol=1e-4)
  with pytest.raises(ValueError, match="at least one query"):
    eval_metrics.wilson_interval(0, 0)
