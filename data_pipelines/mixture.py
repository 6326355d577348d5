"""The training input: one batch per dataset per step (the paper's accumulation over datasets), or one
dataset per step in turn (the round-robin ablation), with loss weights, counters and exact resume.

  mixture = build_mixture(data_config, image_size=32, tokenizer=Tokenizer(path))
  batches = next(mixture)   # {dataset name: {"tokens": [B, T] int32, ...}} (keys: examples.py)
  state = mixture.get_state()   # JSON-serialisable; mixture.set_state(state) resumes exactly.

`data_config` (experiments/data.py builds one): seed, num_workers (grain worker processes per dataset;
0 = in-process), accumulation ("all" | "round_robin"), and datasets: name -> {kind, path, batch_size
(global, per step), seq_len, max_images, num_frames, loss_weight, p_next (interleaved only)}.
Optional per dataset: max_pixels (larger images are skipped; default images.DEFAULT_MAX_PIXELS),
random_flip (default True: training flips images with p = 0.5).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from data_pipelines import images as image_ops
from data_pipelines import streams
from data_pipelines.examples import COUNTERS, ExampleSpec
from data_pipelines.tokenizer import Tokenizer

ACCUMULATION = ("all", "round_robin")
_FIELDS = {"kind", "path", "batch_size", "seq_len", "max_images", "num_frames", "loss_weight",
           "p_next", "max_pixels", "random_flip"}


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
    "interleaved/corrupt_image"; names in examples.COUNTERS."""
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
    self._counters = {k: int(v) for k, v in state["counters"].items()}
    for name, it in self._iterators.items():
      it.set_state(state["streams"][name])

  def close(self):
    """Stops worker processes (also done at garbage collection)."""
    for it in self._iterators.values():
      if hasattr(it, "close"):
        it.close()


def build_mixture(data_config: ml_collections.ConfigDict, *, image_size: int, tokenizer: Tokenizer,
                  process_index: int = 0, process_count: int = 1, split: str = "train") -> Mixture:
  """Builds every dataset's stream for this process (see the module docstring for the config)."""
  if data_config.accumulation not in ACCUMULATION:
    raise ValueError(f"data.accumulation={data_config.accumulation!r}; choose one of {ACCUMULATION}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  built, weights = {}, {}
  for name, cfg in data_config.datasets.items():
    unknown = set(cfg.keys()) - _FIELDS
    if unknown:
      raise ValueError(f"data.datasets.{name} has unknown fields {sorted(unknown)}; known: "
                       f"{sorted(_FIELDS)}.")
    if cfg.batch_size % process_count:
      raise ValueError(f"data.datasets.{name}.batch_size={cfg.batch_size} is not divisible by the "
                       f"{process_count} processes; make it a multiple of {process_count}.")
    spec = ExampleSpec(kind=cfg.kind, seq_len=cfg.seq_len, max_images=cfg.max_images,
                       num_frames=cfg.num_frames, image_size=image_size,
                       p_next=cfg.get("p_next", 0.0), train=split == "train",
                       max_pixels=cfg.get("max_pixels", image_ops.DEFAULT_MAX_PIXELS),
                       random_flip=cfg.get("random_flip", True))
    built[name] = streams.build_stream(
        name, spec, cfg.path, batch_size=cfg.batch_size // process_count, tokenizer=tokenizer,
        seed=data_config.seed, process_index=process_index, process_count=process_count,
        num_workers=data_config.num_workers)
    weights[name] = float(cfg.loss_weight)
  return Mixture(built, weights, data_config.accumulation)
