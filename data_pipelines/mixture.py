"""The training input: one batch per dataset per step (the paper's accumulation over datasets), or one
dataset per step in turn (the round-robin ablation), with loss weights, counters and exact resume.

  mixture = from_config(config, split)   # what the trainer and the held-out evaluation read
  batches = next(mixture)   # {dataset name: {"tokens": [B, T] int32, ...}} (keys: examples.py)
  state = mixture.get_state()   # JSON-serialisable; mixture.set_state(state) resumes exactly.

`config.data` (flamingo_jax/config/run.py: DataConfig, DatasetConfig) says which datasets, where
their shards are and how they make an update; `data.source="synthetic"` streams
data_pipelines/synthetic.py instead of shards.
"""

from __future__ import annotations

import jax
import numpy as np

from data_pipelines import streams
from data_pipelines.examples import COUNTERS, ExampleSpec
from data_pipelines.packing import packing_counts
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import Config, DataConfig


class Mixture:
  """Iterator over steps; each step is {dataset name: batch} (all datasets, or one in turn)."""

  def __init__(self, streams_by_name: dict, loss_weights: dict[str, float], accumulation: str):
    self._iterators = {name: iter(ds) for name, ds in streams_by_name.items()}
    self._loss_weights = dict(loss_weights)
    self._accumulation = accumulation
    self._step = 0
    self._counters = {f"{name}/{c}": 0 for name in self._iterators for c in COUNTERS}

  @property
  def loss_weights(self) -> dict[str, float]:
    return dict(self._loss_weights)

  def counters(self) -> dict[str, int]:
    """Cumulative counts since the start of training (restored by set_state), e.g.
    "interleaved/corrupt_image"; names in examples.COUNTERS, and for packed datasets
    packing.PACKING_COUNTERS."""
    return dict(self._counters)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, dict[str, np.ndarray]]:
    names = list(self._iterators)
    if self._accumulation == "round_robin":
      names = [names[self._step % len(names)]]
    step = {}
    for name in names:
      batch = next(self._iterators[name])
      for counter, value in zip(COUNTERS, streams.count_totals(batch)):
        self._counters[f"{name}/{counter}"] += int(value)
      if "segments" in batch:  # Packed: rows and the examples in them.
        for counter, value in packing_counts(batch).items():
          self._counters[f"{name}/{counter}"] = self._counters.get(f"{name}/{counter}", 0) + value
      step[name] = batch
    self._step += 1
    return step

  def get_state(self) -> dict:
    return {"step": self._step, "counters": dict(self._counters),
            "streams": {name: it.get_state() for name, it in self._iterators.items()}}

  def set_state(self, state: dict):
    if set(state["streams"]) != set(self._iterators):
      raise ValueError(f"The saved data state holds datasets {sorted(state['streams'])} but the "
                       f"config has {sorted(self._iterators)}; restore with the same datasets.")
    self._step = int(state["step"])
    # Merged into zeros: a state saved before a counter was added resumes with it at 0.
    self._counters = {k: 0 for k in self._counters} | {
        k: int(v) for k, v in state["counters"].items()}
    for name, it in self._iterators.items():
      it.set_state(state["streams"][name])

  def close(self):
    """Stops worker processes (also done at garbage collection)."""
    for it in self._iterators.values():
      if hasattr(it, "close"):
        it.close()


def build_mixture(data: DataConfig, *, image_size: int, tokenizer: Tokenizer,
                  process_index: int = 0, process_count: int = 1, split: str = "train",
                  decode_images: bool = True) -> Mixture:
  """This process's streams of the ArrayRecord datasets `data.selected()` reads: `path` for
  split="train" (shuffled, augmented), `eval_path` for "eval" (in order, no augmentation);
  `decode_images=False` leaves the image slots zero (examples.ExampleSpec)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  built, weights = {}, {}
  for name, spec in data.selected().items():
    if spec.batch_size % (process_count * spec.pack):
      raise ValueError(f"data.datasets.{name}.batch_size={spec.batch_size} is not divisible by the "
                       f"{process_count} processes x pack={spec.pack}; make it a multiple of "
                       f"{process_count * spec.pack}.")
    path = spec.path if split == "train" else spec.eval_path
    if not path:
      raise ValueError(f"data.datasets.{name}.eval_path is empty: set the held-out shards.")
    example = ExampleSpec(kind=spec.kind, seq_len=spec.seq_len, max_images=spec.max_images,
                          num_frames=spec.num_frames, image_size=image_size, p_next=spec.p_next,
                          train=split == "train", max_pixels=spec.max_pixels,
                          random_flip=spec.random_flip, decode_images=decode_images)
    built[name] = streams.build_stream(
        name, example, path, batch_size=spec.batch_size // process_count, tokenizer=tokenizer,
        seed=data.seed, process_index=process_index, process_count=process_count,
        num_workers=data.num_workers, pack=spec.pack,
        row_tokens=spec.row_tokens)
    weights[name] = spec.loss_weight
  return Mixture(built, weights, data.accumulation)


def from_config(config: Config, split: str = "train"):
  """The input stream of this process (its share of every dataset's global batch) for a run's
  config; the datasets named in `data.exclude` are left out."""
  model, data = config.model, config.data
  common = dict(process_index=jax.process_index(), process_count=jax.process_count(), split=split)
  if data.source == "synthetic":
    from data_pipelines.synthetic import SyntheticMixture
    return SyntheticMixture(data, image_size=model.vision.image_size,
                            image_token_id=model.image_token_id, eoc_token_id=model.eoc_token_id,
                            **common)
  tokenizer = Tokenizer(data.tokenizer, model.image_token_id, model.eoc_token_id)
  # The text-only LM stage never looks at the images: they are not decoded.
  return build_mixture(data, image_size=model.vision.image_size, tokenizer=tokenizer,
                       decode_images=config.task != "lm", **common)
