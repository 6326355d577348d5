r"""Few-shot evaluation: every task of a config at every shot count -> results JSON + Markdown table.

  python -m flamingo_jax.evaluate --config experiments/evaluation.py:<preset> \
      --checkpoint <flamingo training workdir> --workdir <out>

The model loads as `flamingo_jax.generate` loads it (`load_trained`: frozen towers from
`config.flamingo`, trainable weights from the checkpoint). For each task (experiments/evaluation.py
documents the fields): load the support and query examples
(eval_data.py), pick shots (random, seeded; or RICES with features cached under <workdir>/rices), build
the prompts (fewshot.py), then
* captioning / vqa: `decoding.generate` (beam search, 3 beams, stop at `<EOC>` / EOS) -> CIDEr-D or
  VQA accuracy (eval_metrics.py);
* classification / mapping: `decoding.score` of every class's "name<EOC>" -> ROC-AUC (two classes)
  or top-1, the log-likelihoods averaged over `num_permutations` orders of the shots (prompt
  ensembling). `mapping` is the in-context task: per query the classes get shuffled names
  (`mapping_words`, or the class names permuted), the shots show them (one shot per class at least),
  and the answer is the name of the query's class, so only the shots tell it (chance = 1 / #classes).
Writes <workdir>/results.json (scores per task and shot count, with the settings) and
<workdir>/results.md (tasks as columns, shots as rows, as the paper's Table 1).
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags

from data_pipelines.tokenizer import Tokenizer
from flamingo_jax import decoding
from flamingo_jax import eval_metrics
from flamingo_jax import fewshot
from flamingo_jax import rices
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.eval_data import EvalExample, load_image, load_task_split
from flamingo_jax.generate import load_trained

KINDS = ("captioning", "vqa", "classification", "mapping")
METRIC_NAMES = {"cider": "CIDEr", "vqa_accuracy": "VQA acc.", "roc_auc": "ROC-AUC", "top1": "top-1"}


def shot_answer(example: EvalExample) -> str:
  """The answer a support example shows in a prompt: its most frequent answer (first on ties), i.e.
  VQA's majority answer, a caption set's first caption, a class's name."""
  counts = collections.Counter(example.answers)
  return max(example.answers, key=lambda a: (counts[a], -example.answers.index(a)))


def _check_task(name: str, task) -> None:
  if task.kind not in KINDS:
    raise ValueError(f"tasks.{name}.kind={task.kind!r}; use one of {KINDS}.")
  fewshot.check_template(task.prompt, f"tasks.{name}.prompt")
  if task.selection not in ("random", "rices"):
    raise ValueError(f"tasks.{name}.selection={task.selection!r}; use 'random' or 'rices'.")


def _balanced_shots(labels: np.ndarray, num_queries: int, num_shots: int, num_classes: int,
                    seed: int) -> np.ndarray:
  """[Q, k] support indices with every class shown (k >= #classes), the rest random, random order."""
  if num_shots < num_classes:
    raise ValueError(f"A mapping task needs at least one shot per class ({num_classes}); got "
                     f"{num_shots} (config.shots).")
  out = []
  for q in range(num_queries):
    rng = np.random.default_rng([seed, q])
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in range(num_classes)]
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    picked += [int(i) for i in rng.choice(rest, num_shots - num_classes, replace=False)]
    out.append(rng.permutation(picked))
  return np.asarray(out).reshape(num_queries, num_shots)


class TaskRunner:
  """Runs one task at every shot count on one model (config, params) and tokenizer."""

  def __init__(self, name: str, task, settings: ml_collections.ConfigDict, model_config: FlamingoConfig,
               params, tokenizer: Tokenizer, cache_dir: str, log: Callable[[str], None] = print):
    self.name, self.task, self.settings = name, task, settings
    _check_task(name, task)
    self.model_config, self.params, self.tokenizer, self.log = model_config, params, tokenizer, log
    self.support, class_names = load_task_split(task, task.support_split, task.support_size)
    self.queries, _ = load_task_split(task, task.query_split, task.num_queries)
    self.class_names = tuple(class_names)
    # Two classes (HatefulMemes): ROC-AUC of the second ("yes"); more: top-1.
    self.metric = {"captioning": "cider", "vqa": "vqa_accuracy", "mapping": "top1"}.get(
        task.kind, "roc_auc" if len(self.class_names) == 2 else "top1")
    # What the prompts call the classes: mapping tasks may use other words (task.mapping_words).
    self.shown_names = tuple(task.mapping_words) if task.kind == "mapping" and task.mapping_words \
        else self.class_names
    if len(self.shown_names) != len(self.class_names):
      raise ValueError(f"tasks.{name}.mapping_words needs one word per class ({len(self.class_names)}).")
    if task.kind in ("classification", "mapping") and len(self.class_names) < 2:
      raise ValueError(f"tasks.{name}: a {task.kind} task needs class names (tasks.{name}.class_names).")
    if task.selection == "rices":
      fingerprint = rices.model_fingerprint(model_config, params["vision"])
      features = lambda examples: lambda: rices.vision_features(  # noqa: E731
          model_config, params["vision"], examples)
      self.support_features = rices.cached_features(
          cache_dir, name, f"{task.support_split}[:{len(self.support)}]", fingerprint,
          features(self.support))
      self.query_features = rices.cached_features(
          cache_dir, name, f"{task.query_split}[:{len(self.queries)}]", fingerprint,
          features(self.queries))

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
    permutation per query; otherwise the identity)."""
    if self.task.kind != "mapping":
      return np.arange(len(self.class_names))
    return np.random.default_rng([self.settings.seed, 7, query_index]).permutation(len(self.class_names))

  def _answer(self, example: EvalExample, renaming: np.ndarray) -> str:
    if self.task.kind in ("classification", "mapping"):
      return self.shown_names[renaming[example.label]]
    return shot_answer(example)

  def _prompt(self, q: int, shot_indices, text_only: bool, load=load_image) -> fewshot.Prompt:
    renaming = self._renaming(q)
    shots = [(self.support[i], self._answer(self.support[i], renaming)) for i in shot_indices]
    return fewshot.build_prompt(self.tokenizer, self.task.prompt, self.queries[q], shots,
                                self.model_config.vision.image_size, text_only, load=load)

  def _batches(self, prompts):
    """Fixed-size batches (the last one padded by repeating its last prompt; one compilation)."""
    size = self.settings.batch_size
    num_images = max(len(p.images) for p in prompts)
    for start in range(0, len(prompts), size):
      chunk = list(prompts[start:start + size])
      real = len(chunk)
      chunk += [chunk[-1]] * (size - real)
      yield real, fewshot.pad_batch(chunk, self.tokenizer.pad_id, self.model_config.vision.image_size,
                                    self.settings.pad_to_multiple, num_images)

  # ------------------------------------------------------------------------------ generation tasks
  def _generate(self, shot_indices, text_only: bool) -> list[str]:
    sampling = decoding.SamplingConfig(**self.settings.sampling.to_dict())
    stops = (self.model_config.eoc_token_id, self.tokenizer.eos_id)
    prompts = [self._prompt(q, shot_indices[q], text_only) for q in range(len(self.queries))]
    texts = []
    for real, (tokens, mask, images) in self._batches(prompts):
      new, lengths = jax.device_get(decoding.generate(self.model_config, self.params, tokens, mask,
                                                      images, sampling, stops))
      texts += [self.tokenizer.decode(new[b, :lengths[b]]).strip() for b in range(real)]
    return texts

  # --------------------------------------------------------------------------------- scoring tasks
  def _candidates(self, renaming: np.ndarray):
    """[C, K] right-padded ids of every class's answer (its name and the template's text after
    "{answer}", e.g. "yes<EOC>"), in class order, and the mask."""
    suffix = self.task.prompt.split(fewshot.ANSWER)[1]
    ids = [self.tokenizer.encode_prompt(self.shown_names[renaming[c]] + suffix)
           for c in range(len(self.class_names))]
    k = max(map(len, ids))
    out = np.full((len(ids), k), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(ids), k), bool)
    for c, row in enumerate(ids):
      out[c, :len(row)], mask[c, :len(row)] = row, True
    return out, mask

  def _score(self, shot_indices, text_only: bool) -> np.ndarray:
    """[Q, C] log-likelihood of each query's class c (under its name in that query's prompt),
    averaged over the shot orders of prompt ensembling."""
    num_orders = 1 if text_only else self.task.num_permutations
    orders = fewshot.order_permutations(shot_indices.shape[1], num_orders, self.settings.seed)
    candidates = [self._candidates(self._renaming(q)) for q in range(len(self.queries))]
    total = np.zeros((len(self.queries), len(self.class_names)))
    decoded: dict[int, np.ndarray] = {}  # id(example) -> image: every order shows the same images.

    def load(example, size):
      if id(example) not in decoded:
        decoded[id(example)] = load_image(example, size)
      return decoded[id(example)]

    for order in orders:
      prompts = [self._prompt(q, shot_indices[q][list(order)], text_only, load)
                 for q in range(len(self.queries))]
      row = 0
      for real, (tokens, mask, images) in self._batches(prompts):
        picked = [candidates[min(row + b, len(candidates) - 1)] for b in range(len(tokens))]
        scores = decoding.score(self.model_config, self.params, tokens, mask, images,
                                np.stack([c for c, _ in picked]), np.stack([m for _, m in picked]))
        total[row:row + real] += np.asarray(scores)[:real]
        row += real
    return total / len(orders)

  # ------------------------------------------------------------------------------------------- run
  def run(self, num_shots: int) -> float:
    """The task's metric at `num_shots` shots, in the paper's units (CIDEr x100, percentages)."""
    shot_indices, text_only = self.shots(num_shots)
    if self.task.kind in ("captioning", "vqa"):
      predictions = self._generate(shot_indices, text_only)
      for q in range(min(2, len(predictions))):
        self.log(f"  {self.name} {num_shots}-shot: {predictions[q]!r} (reference "
                 f"{self.queries[q].answers[0]!r})")
      if self.metric == "cider":
        refs = {q: [eval_metrics.tokenize_caption(a) for a in ex.answers]
                for q, ex in enumerate(self.queries)}
        cands = {q: eval_metrics.tokenize_caption(p) for q, p in enumerate(predictions)}
        return 100 * eval_metrics.cider_d(refs, cands)[0]
      return 100 * float(np.mean([eval_metrics.vqa_accuracy(p, ex.answers)
                                  for p, ex in zip(predictions, self.queries)]))
    scores = self._score(shot_indices, text_only)
    # Candidates are in class order (named by the query's renaming): the right one is its class.
    labels = [ex.label for ex in self.queries]
    if self.metric == "roc_auc":
      positive = scores[:, 1] - np.logaddexp(scores[:, 0], scores[:, 1])  # log p(class 1 | 2 classes)
      return 100 * eval_metrics.roc_auc(labels, positive)
    return 100 * eval_metrics.top1(scores, labels)


def evaluate(settings: ml_collections.ConfigDict, model_config: FlamingoConfig, params,
             tokenizer: Tokenizer, workdir: str, log: Callable[[str], None] = print) -> dict:
  """Runs every task of `settings.tasks` at every `settings.shots`; writes results.json and
  results.md into `workdir` and returns the results dict."""
  if tokenizer.vocab_size != model_config.lm.vocab_size:
    raise ValueError(f"The tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                     f"model.lm.vocab_size={model_config.lm.vocab_size}; set "
                     "config.flamingo.data.tokenizer to the model's tokenizer.")
  os.makedirs(workdir, exist_ok=True)
  results = {"tasks": {}, "settings": json.loads(settings.to_json_best_effort())}
  for name, task in settings.tasks.items():
    start = time.perf_counter()
    runner = TaskRunner(name, task, settings, model_config, params, tokenizer,
                        os.path.join(workdir, "rices"), log)
    scores = {}
    for k in settings.shots:
      scores[str(k)] = runner.run(k)
      log(f"{name}: {k}-shot {METRIC_NAMES[runner.metric]} = {scores[str(k)]:.2f}")
    results["tasks"][name] = dict(
        metric=runner.metric, scores=scores, num_queries=len(runner.queries),
        num_support=len(runner.support), selection=task.selection,
        chance=100 / len(runner.class_names) if task.kind == "mapping" else None,
        seconds=round(time.perf_counter() - start, 1))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(results_table(results))
  return results


def results_table(results: dict) -> str:
  """Markdown: tasks as columns, shot counts as rows (the paper's Table 1 layout), then settings."""
  tasks = results["tasks"]
  shots = sorted({int(k) for t in tasks.values() for k in t["scores"]})
  header = "| shots | " + " | ".join(
      f"{name} ({METRIC_NAMES[t['metric']]})" for name, t in tasks.items()) + " |"
  lines = [header, "|---" * (len(tasks) + 1) + "|"]
  for k in shots:
    cells = [f"{t['scores'][str(k)]:.1f}" if str(k) in t["scores"] else "" for t in tasks.values()]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  chance = [f"{name}: chance {t['chance']:.1f}" for name, t in tasks.items() if t.get("chance")]
  s = results["settings"]
  notes = ["queries / support: " + ", ".join(
      f"{name} {t['num_queries']} / {t['num_support']} ({t['selection']})" for name, t in tasks.items()),
      f"decoding: {s['sampling']['strategy']} (beams {s['sampling']['num_beams']}, max "
      f"{s['sampling']['max_new_tokens']} new tokens); 0 shots = {s['num_text_only_shots']} "
      f"text-only examples; seed {s['seed']}"] + chance
  return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv):
  del argv
  settings, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  model_config, params = load_trained(settings.flamingo, flags.FLAGS.checkpoint)
  results = evaluate(settings, model_config, params, Tokenizer(settings.flamingo.data.tokenizer),
                     workdir)
  print(results_table(results))


if __name__ == "__main__":
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiments/evaluation.py:<preset>")
  flags.DEFINE_string("checkpoint", None, "Workdir of a flamingo_jax.train run (task=flamingo).")
  flags.DEFINE_string("workdir", None, "Where results.json, results.md and the RICES cache go.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)
