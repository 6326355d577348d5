"""One few-shot task on one model: shots (random, balanced per class, or RICES), prompts, then
`decoding.generate` (captioning, VQA) or `decoding.score` (classification, mapping) and the metric.

`mapping` is the in-context task: per query the classes get fresh names (drawn from `mapping_words`,
or the class names permuted), the shots show them (k < #classes shots: k different classes; more:
every class, the rest random), and the answer is the name of the query's class, so only the shots
tell it (chance = 1 / #classes).

The model is reached through `ModelCalls` only (generate, score, RICES features): another
implementation with the same signatures (a served model, a stub with known outputs) runs the same
harness.

Several processes (hosts.py): shots, shot orders and renamings are drawn for every query in every
process (they never depend on the process count); each process builds the prompts of its share of
the queries and runs their batches, and the predictions (token ids, class scores) are gathered to
every process, which all compute the same metric.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from data_pipelines.eval_sets import EvalExample, load_image, load_task_split
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import EvalTaskConfig, EvaluationConfig, FlamingoConfig
from flamingo_jax.evaluation import fewshot, hosts, metrics, rices
from flamingo_jax.inference import decoding

METRIC_NAMES = {"cider": "CIDEr", "vqa_accuracy": "VQA acc.", "roc_auc": "ROC-AUC", "top1": "top-1"}


@dataclasses.dataclass(frozen=True)
class ModelCalls:
  """The model functions the harness calls, with the signatures of the defaults:
  generate(config, params, tokens, prompt_mask, images, sampling, stop_tokens) -> (new_tokens [B, N],
  lengths [B]); score(config, params, tokens, prompt_mask, images, candidates, candidate_mask) ->
  [B, C] log-likelihoods; features(config, vision_params, examples) -> [len(examples), D] (RICES; in
  batches of rices.BATCH_SIZE, the unit processes share examples in)."""
  generate: Callable = decoding.generate
  score: Callable = decoding.score
  features: Callable = rices.vision_features

  @classmethod
  def on(cls, mesh: jax.sharding.Mesh) -> ModelCalls:
    """The defaults on `mesh` (params laid out on it, `pretrained.load_trained(workdir, mesh)`):
    each call's rows split over its batch devices."""
    return cls(functools.partial(decoding.generate, mesh=mesh),
               functools.partial(decoding.score, mesh=mesh),
               functools.partial(rices.vision_features, mesh=mesh))


@dataclasses.dataclass(frozen=True)
class Score:
  """A task's score at one shot count and its 95% interval (low, high), in the paper's units, and
  the predictions it scores, one per query: the generated text (captioning, VQA), or each class's
  log-likelihood averaged over the shot orders (classification, mapping)."""
  value: float
  low: float
  high: float
  predictions: tuple

  @classmethod
  def of(cls, fraction: float, interval: tuple[float, float], predictions) -> Score:
    """From a fraction in [0, 1] (CIDEr-D's raw value) and its interval: x100."""
    return cls(100 * fraction, 100 * interval[0], 100 * interval[1], tuple(predictions))


def shot_answer(example: EvalExample) -> str:
  """The answer a support example shows in a prompt: its most frequent answer (first on ties), i.e.
  VQA's majority answer, a caption set's first caption, a class's name."""
  counts = collections.Counter(example.answers)
  return max(example.answers, key=lambda a: (counts[a], -example.answers.index(a)))


def _balanced_shots(labels: np.ndarray, num_queries: int, num_shots: int, num_classes: int,
                    seed: int) -> np.ndarray:
  """[Q, k] support indices, random order: one example of each of min(k, #classes) random classes
  (every class when k >= #classes), the rest random."""
  out = []
  for q in range(num_queries):
    rng = np.random.default_rng([seed, q])
    classes = rng.permutation(num_classes)[:num_shots]
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    picked += [int(i) for i in rng.choice(rest, num_shots - len(picked), replace=False)]
    out.append(rng.permutation(picked))
  return np.asarray(out).reshape(num_queries, num_shots)


class TaskRunner:
  """Runs one task at every shot count on one model (config, params, reached through `calls`) and
  tokenizer; RICES features are cached under `cache_dir`."""

  def __init__(self, name: str, task: EvalTaskConfig, settings: EvaluationConfig,
               model_config: FlamingoConfig, params, tokenizer: Tokenizer, cache_dir: str,
               log: Callable[[str], None] = print, calls: ModelCalls = ModelCalls()):
    self.name, self.task, self.settings = name, task, settings
    self.model_config, self.params, self.tokenizer, self.log = model_config, params, tokenizer, log
    self.calls = calls
    self.support, class_names = load_task_split(task, task.support_split, task.support_size)
    self.queries, _ = load_task_split(task, task.query_split, task.num_queries)
    self.class_names = tuple(class_names)
    # Two classes (HatefulMemes): ROC-AUC of the second ("yes"); more: top-1.
    self.metric = {"captioning": "cider", "vqa": "vqa_accuracy", "mapping": "top1"}.get(
        task.kind, "roc_auc" if len(self.class_names) == 2 else "top1")
    # The words prompts call the classes: mapping tasks draw them from task.mapping_words.
    self.shown_names = tuple(task.mapping_words) if task.kind == "mapping" and task.mapping_words \
        else self.class_names
    if len(self.shown_names) < len(self.class_names):  # Class names a tfds builder gave just now.
      raise ValueError(f"tasks.{name}.mapping_words needs a word per class at least "
                       f"({len(self.class_names)}).")
    if task.kind in ("classification", "mapping") and len(self.class_names) < 2:
      raise ValueError(f"tasks.{name}: a {task.kind} task needs class names (tasks.{name}.class_names).")
    if task.selection == "rices":
      model = rices.model_fingerprint(model_config, params["vision"])
      self.support_features = self._features(cache_dir, model, task.support_split, self.support)
      self.query_features = self._features(cache_dir, model, task.query_split, self.queries)

  def _features(self, cache_dir: str, model: str, split: str, examples) -> np.ndarray:
    """RICES features of `examples` (the task's `split`), cached under `cache_dir` for the vision
    tower fingerprinted `model`; each process computes its share."""
    def compute():
      rows = hosts.share(len(examples), rices.BATCH_SIZE)
      local = self.calls.features(self.model_config, self.params["vision"],
                                  examples[rows.start:rows.stop])
      return hosts.gather(np.asarray(local, np.float32), len(examples), rices.BATCH_SIZE)
    return rices.cached_features(cache_dir, self.name, split, examples, model, compute)

  def chance(self) -> float | None:
    """The score of guessing: 100 / #classes (top-1), 50 (ROC-AUC); None for generation tasks."""
    if self.metric == "top1":
      return 100 / len(self.class_names)
    return 50.0 if self.metric == "roc_auc" else None

  # ------------------------------------------------------------------------------------------ shots
  def shots(self, num_shots: int) -> tuple[np.ndarray, bool]:
    """([Q, k'] support indices per query, text_only): 0 shots -> the text-only examples."""
    q, s, seed = len(self.queries), len(self.support), self.settings.seed
    if num_shots == 0:
      return fewshot.random_shots(q, s, self.settings.num_text_only_shots, seed), True
    if self.task.kind == "mapping":
      labels = np.asarray([ex.label for ex in self.support])
      return _balanced_shots(labels, q, num_shots, len(self.class_names), seed + num_shots), False
    if self.task.selection == "rices":
      return rices.most_similar(self.query_features, self.support_features, num_shots), False
    return fewshot.random_shots(q, s, num_shots, seed + num_shots), False

  def _renaming(self, query_index: int) -> np.ndarray:
    """Class c is called shown_names[renaming[c]] in this query's prompt (mapping tasks: a seeded
    draw of distinct words per query; otherwise the identity)."""
    if self.task.kind != "mapping":
      return np.arange(len(self.class_names))
    rng = np.random.default_rng([self.settings.seed, 7, query_index])
    return rng.choice(len(self.shown_names), len(self.class_names), replace=False)

  def _answer(self, example: EvalExample, renaming: np.ndarray) -> str:
    if self.task.kind in ("classification", "mapping"):
      return self.shown_names[renaming[example.label]]
    return shot_answer(example)

  def _prompt(self, q: int, shot_indices, text_only: bool, load=load_image) -> fewshot.Prompt:
    renaming = self._renaming(q)
    shots = [(self.support[i], self._answer(self.support[i], renaming)) for i in shot_indices]
    return fewshot.build_prompt(self.tokenizer, self.task.prompt, self.queries[q], shots,
                                self.model_config.vision.image_size, text_only, load=load)

  def _queries(self) -> range:
    """The queries this process runs (hosts.share: whole batches of the one-process run)."""
    return hosts.share(len(self.queries), self.settings.batch_size)

  def _gathered(self, local):
    """Every process's rows of `local` (a tree of [len(_queries()), ...] arrays), all queries."""
    return hosts.gather(local, len(self.queries), self.settings.batch_size)

  def _batches(self, prompts):
    """(start, real rows, batch) of fixed-size batches (the last one padded by repeating its last
    prompt; one compilation). Every prompt of a shot count shows as many images, so this
    process's prompts pad to the images of all queries' prompts."""
    size = self.settings.batch_size
    num_images = max((len(p.images) for p in prompts), default=0)
    for start in range(0, len(prompts), size):
      chunk = list(prompts[start:start + size])
      real = len(chunk)
      chunk += [chunk[-1]] * (size - real)
      yield start, real, fewshot.pad_batch(chunk, self.tokenizer.pad_id,
                                           self.model_config.vision.image_size,
                                           self.settings.pad_to_multiple, num_images)

  # ------------------------------------------------------------------------------ generation tasks
  def _generate(self, shot_indices, text_only: bool) -> list[str]:
    """Every query's generated text."""
    sampling = self.settings.sampling
    stops = (self.model_config.eoc_token_id, self.tokenizer.eos_id)
    queries = self._queries()
    prompts = [self._prompt(q, shot_indices[q], text_only) for q in queries]
    new = np.zeros((len(queries), sampling.max_new_tokens), np.int32)  # This process's queries.
    lengths = np.zeros(len(queries), np.int32)
    for start, real, (tokens, mask, images) in self._batches(prompts):
      batch_new, batch_lengths = jax.device_get(self.calls.generate(
          self.model_config, self.params, tokens, mask, images, sampling, stops))
      new[start:start + real], lengths[start:start + real] = batch_new[:real], batch_lengths[:real]
    new, lengths = self._gathered((new, lengths))
    return [self.tokenizer.decode(new[q, :lengths[q]]).strip() for q in range(len(self.queries))]

  # --------------------------------------------------------------------------------- scoring tasks
  def _candidate_ids(self, renaming: np.ndarray) -> list[list[int]]:
    """The ids of every class's answer (its name and the template's text after "{answer}", e.g.
    "yes<EOC>"), in class order."""
    suffix = self.task.prompt.split(fewshot.ANSWER)[1]
    return [self.tokenizer.encode_prompt(self.shown_names[renaming[c]] + suffix)
            for c in range(len(self.class_names))]

  def _padded(self, ids: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """[C, length] right-padded candidate ids and their mask."""
    out = np.full((len(ids), length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(ids), length), bool)
    for c, row in enumerate(ids):
      out[c, :len(row)], mask[c, :len(row)] = row, True
    return out, mask

  def _score(self, shot_indices, text_only: bool) -> np.ndarray:
    """[Q, C] log-likelihood of each query's class c (under its name in that query's prompt),
    averaged over the shot orders of prompt ensembling."""
    num_orders = 1 if text_only else self.task.num_permutations
    orders = fewshot.order_permutations(shot_indices.shape[1], num_orders, self.settings.seed)
    ids = [self._candidate_ids(self._renaming(q)) for q in range(len(self.queries))]
    # One candidate length for all queries (the names differ per query): one batch shape.
    length = max(len(row) for rows in ids for row in rows)
    queries = self._queries()
    candidates = [self._padded(ids[q], length) for q in queries]
    total = np.zeros((len(queries), len(self.class_names)))  # This process's queries.
    decoded: dict[int, np.ndarray] = {}  # id(example) -> image: every order shows the same images.

    def load(example, size):
      if id(example) not in decoded:
        decoded[id(example)] = load_image(example, size)
      return decoded[id(example)]

    for order in orders:
      prompts = [self._prompt(q, shot_indices[q][list(order)], text_only, load) for q in queries]
      for start, real, (tokens, mask, images) in self._batches(prompts):
        picked = [candidates[min(start + b, len(candidates) - 1)] for b in range(len(tokens))]
        scores = self.calls.score(self.model_config, self.params, tokens, mask, images,
                                  np.stack([c for c, _ in picked]), np.stack([m for _, m in picked]))
        total[start:start + real] += np.asarray(scores)[:real]
    return self._gathered(total / len(orders))

  # ------------------------------------------------------------------------------------------- run
  def run(self, num_shots: int) -> Score:
    """The task's metric at `num_shots` shots with its 95% interval from the number of queries, in
    the paper's units (CIDEr x100, percentages)."""
    shot_indices, text_only = self.shots(num_shots)
    if self.task.kind in ("captioning", "vqa"):
      predictions = self._generate(shot_indices, text_only)
      for q in range(min(2, len(predictions))):
        self.log(f"  {self.name} {num_shots}-shot: {predictions[q]!r} (reference "
                 f"{self.queries[q].answers[0]!r})")
      if self.metric == "cider":
        references = [ex.answers for ex in self.queries]
        mean, per_image = metrics.cider_d_of_texts(references, predictions)
        per_query = [per_image[q] for q in range(len(predictions))]
      else:
        per_query = [metrics.vqa_accuracy(p, ex.answers)
                     for p, ex in zip(predictions, self.queries)]
        mean = float(np.mean(per_query))
      return Score.of(mean, metrics.mean_interval(per_query), predictions)
    scores = self._score(shot_indices, text_only)
    # Candidates are in class order (named by the query's renaming): the right one is its class.
    labels = np.asarray([ex.label for ex in self.queries])
    if self.metric == "roc_auc":
      positive = scores[:, 1] - np.logaddexp(scores[:, 0], scores[:, 1])  # log p(class 1 | 2 classes)
      auc = metrics.roc_auc(labels, positive)
      return Score.of(auc, metrics.roc_auc_interval(auc, int(labels.sum()),
                                                    int((labels == 0).sum())), scores.tolist())
    accuracy = metrics.top1(scores, labels)
    correct = int(np.sum(np.argmax(scores, axis=-1) == labels))
    return Score.of(accuracy, metrics.wilson_interval(correct, len(labels)), scores.tolist())
