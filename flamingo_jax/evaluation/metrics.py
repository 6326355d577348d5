"""Few-shot evaluation metrics, in plain Python / numpy (no Java): CIDEr-D, VQA accuracy, ROC-AUC, top-1.

* `cider_d(references, candidates)`: the COCO caption evaluation's CIDEr-D (pycocoevalcap `Cider`,
  sigma 6, n-grams 1..4, clipped candidate counts, document frequencies over the references of the
  evaluated set), computed on tokenised captions. `tokenize_captions` / `tokenize_caption` (module
  `ptb`) equal pycocoevalcap's Java PTBTokenizer, so PTBTokenizer -> Cider end to end is matched
  (tests/evaluation/golden: > 7,000 captions, scores to 1e-9).
* `vqa_accuracy(prediction, answers)`: the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py at
  a013f00): `normalize_vqa_answer` (punctuation, digits, articles, contractions) on the prediction
  and the human answers (when the humans disagree), then min(#matching humans / 3, 1) averaged over
  the 10 leave-one-out subsets of nine humans. Non-ASCII answers are normalised as the official
  Python 2 code does (see `normalize_vqa_answer`).
* `roc_auc(labels, scores)` (HatefulMemes) and `top1(logits_or_scores, labels)` (ImageNet-style).
* 95% intervals from the number of queries: `wilson_interval` (top-1), `mean_interval` (CIDEr-D, VQA
  accuracy: per-query values), `roc_auc_interval` (Hanley & McNeil).
"""

from __future__ import annotations

import collections
import math
import re
from typing import Mapping, Sequence

import numpy as np

from flamingo_jax.evaluation.ptb import tokenize_caption, tokenize_captions  # noqa: F401 (API)

# ----------------------------------------------------------------------------------------- CIDEr-D


def _ngram_counts(sentence: str, n: int) -> collections.Counter:
  words = sentence.split()
  return collections.Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                             for i in range(len(words) - k + 1))


def cider_d(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
  """CIDEr-D of tokenised `candidates` {id: caption} against tokenised `references` {id: [captions]}
  -> (corpus score, {id: score}); both on the 0-10 scale of pycocoevalcap (x100 for the paper's).

  The document frequency of an n-gram is the number of ids whose references contain it; log(#ids) is
  the idf's reference length. Each reference contributes the clipped cosine similarity of tf-idf
  vectors per n-gram order, times the Gaussian length penalty exp(-delta^2 / (2 sigma^2)) where
  length counts bigrams (pycocoevalcap's definition)."""
  if set(references) != set(candidates):
    missing = set(references) ^ set(candidates)
    raise ValueError(f"cider_d: references and candidates must have the same ids; differ on "
                     f"{sorted(map(str, missing))[:5]}")
  ids = list(references)
  if not ids:
    raise ValueError("cider_d: no captions to score.")
  ref_counts = {i: [_ngram_counts(r, n) for r in references[i]] for i in ids}
  if any(not refs for refs in ref_counts.values()):
    raise ValueError("cider_d: every id needs at least one reference caption.")
  document_frequency = collections.Counter(
      ngram for i in ids for ngram in set().union(*ref_counts[i]))
  log_num_docs = math.log(float(len(ids)))

  def tfidf(counts):
    vectors = [dict() for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for ngram, tf in counts.items():
      order = len(ngram) - 1
      weight = float(tf) * (log_num_docs - math.log(max(1.0, document_frequency[ngram])))
      vectors[order][ngram] = weight
      norms[order] += weight ** 2
      if order == 1:
        length += tf
    return vectors, [math.sqrt(x) for x in norms], length

  scores = {}
  for i in ids:
    vec, norm, length = tfidf(_ngram_counts(candidates[i], n))
    total = np.zeros(n)
    for ref in ref_counts[i]:
      vec_ref, norm_ref, length_ref = tfidf(ref)
      penalty = math.exp(-float(length - length_ref) ** 2 / (2 * sigma ** 2))
      for order in range(n):
        value = sum(min(w, vec_ref[order].get(g, 0.0)) * vec_ref[order].get(g, 0.0)
                    for g, w in vec[order].items())
        if norm[order] != 0 and norm_ref[order] != 0:
          value /= norm[order] * norm_ref[order]
        total[order] += value * penalty
    scores[i] = float(np.mean(total) / len(ref_counts[i]) * 10.0)
  return float(np.mean(list(scores.values()))), scores


# ------------------------------------------------------------------------------------ VQA accuracy

# The tables and rules of the official evaluation, GT-Vision-Lab/VQA commit a013f00 (2021, "Fixed
# processing answers bug"), PythonEvaluationTools/vqaEvaluation/vqaEval.py. Copyright (c) 2014,
# Aishwarya Agrawal; redistributed under its BSD licence (the repository's license.txt).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt":
    "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve":
    "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've",
    "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd":
    "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam":
    "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve":
    "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at":
    "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve":
    "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've":
    "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've":
    "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys":
    "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve":
    "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll":
    "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve":
    "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've":
    "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve":
    "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve":
    "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve":
    "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd":
    "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
# Kept verbatim: the first expression's "(?!<=" is a typo for a look-behind there, and the official
# call passes re.UNICODE (= 32) as `count`, so at most 32 periods are stripped. The official
# patterns are Python 2 byte strings compiled without re.UNICODE: \d is [0-9] (re.ASCII here).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
                "`", ",", "?", "!")


def cider_d_of_texts(references: Sequence[Sequence[str]], candidates: Sequence[str]
                     ) -> tuple[float, dict[int, float]]:
  """CIDEr-D of raw captions (references[i]: image i's, candidates[i] its caption), tokenised as
  COCOEvalCap does: every reference in one `tokenize_captions` call, every candidate in another (the
  lexer looks ahead across a caption's end)."""
  flat = tokenize_captions([r for refs in references for r in refs])
  starts = np.cumsum([0] + [len(refs) for refs in references])
  tokenized = {i: flat[starts[i]:starts[i + 1]] for i in range(len(references))}
  return cider_d(tokenized, dict(enumerate(tokenize_captions(list(candidates)))))


def _strip_whitespace(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def _vqa_punctuation(text: str) -> str:
  out = text
  for p in _PUNCTUATION:
    if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def _python2_lower(text: str) -> str:
  """Python 2's unicode.lower(): each character's simple lower-case mapping, so "İ" -> "i" (Python
  3: "i̇") and no final sigma ("ΟΔΟΣ" -> "οδοσ"; Python 3: "οδος")."""
  return "".join("i" if ch == "\u0130" else ch.lower() for ch in text)


def normalize_vqa_answer(answer: str) -> str:
  """An answer as the official evaluation normalises it: whitespace, punctuation, number words ->
  digits, articles dropped, contractions restored ("Two dogs!" -> "2 dogs").

  The official code is Python 2, on unicode answers; this follows it where Python 3 differs: \\d is
  ASCII in the period and comma rules ("٣.٥" -> "٣٥", "١,٠٠٠" -> "١ ٠٠٠"; Python 3: "٣.٥",
  "١٠٠٠") and lower-casing is Python 2's (`_python2_lower`). Left as Python 3 has it: Unicode 14's
  tables, not 5.2's (404 code points lower-cased only since, e.g. Cherokee and Georgian Mtavruli
  capitals; U+180E no longer a space)."""
  text = _vqa_punctuation(_strip_whitespace(answer))
  words = [_NUMBERS.get(w, w) for w in _python2_lower(text).split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """Official VQA accuracy in [0, 1] of one predicted answer against the human answers (10 in VQAv2):
  the mean over leaving each human out of min(#other humans who gave the answer / 3, 1).

  As the official code does, answers and prediction are normalised only when the humans disagree;
  when all humans gave the same string the prediction must equal it after whitespace stripping."""
  if not answers:
    raise ValueError("vqa_accuracy: the question has no ground-truth answers.")
  humans = [_strip_whitespace(a) for a in answers]
  predicted = _strip_whitespace(prediction)
  if len(set(humans)) > 1:
    humans = [normalize_vqa_answer(a) for a in humans]
    predicted = normalize_vqa_answer(predicted)
  scores = [min(1.0, sum(1 for j, a in enumerate(humans) if j != left_out and a == predicted) / 3.0)
            for left_out in range(len(humans))]
  return sum(scores) / len(scores)


# ------------------------------------------------------------------------- classification metrics

def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
  """Area under the ROC curve of binary `labels` (1 = positive) ranked by `scores`; ties count 1/2
  (the Mann-Whitney statistic, as sklearn.metrics.roc_auc_score)."""
  labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
  positives, negatives = scores[labels], scores[~labels]
  if len(positives) == 0 or len(negatives) == 0:
    raise ValueError("roc_auc needs both classes among the labels; evaluate more examples "
                     "(the task's num_queries).")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks (1-based) over ties.
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
  ends = np.r_[starts[1:], len(scores)]
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = (start + end + 1) / 2
  rank_sum = ranks[labels].sum()
  return float((rank_sum - len(positives) * (len(positives) + 1) / 2) /
               (len(positives) * len(negatives)))


def top1(scores, labels: Sequence[int]) -> float:
  """Fraction of rows of `scores` [Q, C] whose highest-scoring class is `labels` [Q] (first on ties)."""
  scores = np.asarray(scores)
  return float(np.mean(np.argmax(scores, axis=-1) == np.asarray(labels)))


# --------------------------------------------------------------------------- 95% intervals

Z_95 = 1.959963984540054  # The standard normal's 97.5% quantile.


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
  """95% Wilson score interval of a proportion (`correct` of `total` queries), in [0, 1]."""
  if total <= 0:
    raise ValueError("An interval needs at least one query.")
  p, z2 = correct / total, Z_95 ** 2
  centre = (p + z2 / (2 * total)) / (1 + z2 / total)
  half = Z_95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total ** 2)) / (1 + z2 / total)
  return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
  """95% normal-approximation interval of the mean of per-query `values` (CIDEr-D per image, VQA
  accuracy per question; never negative): mean +- 1.96 x sample standard deviation / sqrt(n), the
  low end clipped at 0."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    raise ValueError("An interval of a mean needs at least two queries.")
  half = Z_95 * values.std(ddof=1) / math.sqrt(len(values))
  return max(0.0, float(values.mean() - half)), float(values.mean() + half)


def roc_auc_interval(auc: float, num_positives: int, num_negatives: int) -> tuple[float, float]:
  """95% interval of a ROC-AUC from Hanley & McNeil's (1982) standard error, clipped to [0, 1]."""
  q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
  variance = (auc * (1 - auc) + (num_positives - 1) * (q1 - auc ** 2)
              + (num_negatives - 1) * (q2 - auc ** 2)) / (num_positives * num_negatives)
  half = Z_95 * math.sqrt(max(variance, 0.0))
  return max(0.0, auc - half), min(1.0, auc + half)
