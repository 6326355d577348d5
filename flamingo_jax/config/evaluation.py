"""Decoding and few-shot evaluation settings: `SamplingConfig` (inference/decoding.py) and the
evaluation config (`EvaluationConfig`, its tasks `EvalTaskConfig`) that `experiments/evaluation.py`
presets and `python -m flamingo_jax.evaluation.evaluate` reads.
"""

from __future__ import annotations

import dataclasses

from flamingo_jax.config.schema import Section, fail, join, non_negative, one_of, positive

STRATEGIES = ("greedy", "beam", "sample")
TASK_KINDS = ("captioning", "vqa", "classification", "mapping")
TASK_SOURCES = ("tfds", "demo")
SELECTIONS = ("random", "rices")
ANSWER = "{answer}"  # Where a prompt template puts the answer.


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
  """How `decoding.generate` picks tokens; generation stops at `<EOC>` / EOS or max_new_tokens."""

  strategy: str = "greedy"  # One of STRATEGIES.
  max_new_tokens: int = 20
  num_beams: int = 3  # beam only (the paper: 3).
  length_penalty: float = 0.0  # beam only: candidates ranked by logprob / length**length_penalty.
  temperature: float = 1.0  # sample only: logits / temperature.
  top_k: int = 0  # sample only: keep the k most likely tokens; 0 = off.
  top_p: float = 1.0  # sample only: keep the smallest set of probability >= top_p; 1.0 = off.

  def __post_init__(self):  # Also when built in Python: decoding is called with it directly.
    self.check("sampling")

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "strategy", STRATEGIES)
    positive(prefix, self, "max_new_tokens", "num_beams", "temperature")
    non_negative(prefix, self, "top_k")
    if not 0 < self.top_p <= 1:
      fail(join(prefix, "top_p"), self.top_p, "must be in (0, 1] (1 = off).")


@dataclasses.dataclass(frozen=True)
class EvalTaskConfig(Section):
  """One few-shot benchmark: its data, its prompt, how shots are picked and how it is scored."""

  kind: str = "captioning"  # One of TASK_KINDS; `mapping` is the in-context renaming task.
  source: str = "tfds"  # "tfds" (a tfds builder) or "demo" (the bundled demo corpus).
  tfds_name: str = ""  # tfds: the builder, e.g. coco_captions, flamingo_eval_files/vqav2.
  data_dir: str = ""  # tfds: its data_dir; demo: the corpus directory.
  manual_dir: str = ""  # flamingo_eval_files builders: the official annotation files.
  support_split: str = "train"  # The split the shots come from.
  query_split: str = "validation"  # The evaluated split.
  support_size: int = 2048  # Support examples (paper: 2048).
  num_queries: int = 1024  # Evaluated queries; 0: the whole split.
  # One example; "{answer}" marks the answer, "{question}" the question (VQA) or meme text.
  prompt: str = "<image>Output: {answer}<EOC>"
  selection: str = "random"  # One of SELECTIONS: seeded random, or RICES (most similar last).
  num_permutations: int = 1  # Scoring tasks: shot orders averaged (prompt ensembling; paper: 6).
  class_names: tuple[str, ...] = ()  # classification / mapping: candidates ("": the builder's).
  # mapping: the words the shots call the classes: a seeded draw of one distinct word per class for
  # each query (() = the class names, permuted). A large pool of words never trained on (the demo's
  # held-out nonsense names) leaves only the shots to tell which word is which class.
  mapping_words: tuple[str, ...] = ()

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "kind", TASK_KINDS)
    one_of(prefix, self, "source", TASK_SOURCES)
    one_of(prefix, self, "selection", SELECTIONS)
    positive(prefix, self, "support_size", "num_permutations")
    non_negative(prefix, self, "num_queries")
    if self.prompt.count(ANSWER) != 1 or self.prompt.count("<image>") != 1:
      fail(join(prefix, "prompt"), self.prompt, f"must contain exactly one {ANSWER} and one "
           "<image>, e.g. '<image>Output: {answer}<EOC>'.")
    if self.source == "tfds" and not self.tfds_name:
      fail(join(prefix, "tfds_name"), self.tfds_name, "source=tfds needs the builder's name.")
    words = self.mapping_words
    if self.kind in ("classification", "mapping") and words and (
        len(set(words)) != len(words) or len(words) < len(self.class_names)):
      fail(join(prefix, "mapping_words"), words, "must be distinct words, at least one per class "
           f"({len(self.class_names)} class_names).")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Section):
  """Few-shot evaluation of a trained run (the model comes from the run's own record)."""

  seed: int = 0  # Shot draws (random selection, 0-shot text examples, orders, renamings).
  shots: tuple[int, ...] = (0, 4, 8, 16, 32)  # Shot counts evaluated (paper: 0/4/8/16/32).
  num_text_only_shots: int = 2  # 0 shots: this many text-only examples (paper: 2).
  batch_size: int = 8  # Queries per generate / score call.
  pad_to_multiple: int = 32  # Prompt lengths rounded up to this (fewer compilations).
  sampling: SamplingConfig = SamplingConfig(strategy="beam", max_new_tokens=20, num_beams=3)
  tasks: dict[str, EvalTaskConfig] = dataclasses.field(default_factory=dict)

  def check(self, prefix: str) -> None:
    positive(prefix, self, "batch_size", "pad_to_multiple")
    non_negative(prefix, self, "num_text_only_shots")
    if not self.shots or min(self.shots) < 0:
      fail(join(prefix, "shots"), self.shots, "must be one or more shot counts >= 0.")
    if not self.tasks:
      fail(join(prefix, "tasks"), {}, "must name at least one task.")
