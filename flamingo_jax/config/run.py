"""A training run's config (`Config`): the model and every other section, each field documented once.

Presets (`experiments/flamingo.py`) start from these defaults as an `ml_collections.ConfigDict`
(`Config().as_config_dict()`), command lines override single fields (`--config.train.num_steps=10`),
and every entry point turns the result into this typed, checked config with `Config.from_dict`
before anything is traced or compiled. A run records it in its workdir (`weights.store`).
"""

from __future__ import annotations

import dataclasses
import os

from flamingo_jax.config.model import DTYPES, FlamingoConfig
from flamingo_jax.config.schema import Section, fail, join, non_negative, one_of, positive

TASKS = ("flamingo", "lm", "contrastive")  # The paper's three stages (training/tasks.py).
SOURCES = ("synthetic", "arrayrecord")
ACCUMULATION = ("all", "round_robin")
KINDS = ("interleaved", "pairs", "video")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd")
FROZEN_SHARDING = ("fsdp", "tensor", "replicated")
LM_PASSES = ("joint", "per_dataset")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
  """Device mesh axes; `flamingo_jax/sharding.py` maps parameters and activations onto them."""

  data: int = -1  # Pure data parallelism. One axis may be -1: the devices the others leave.
  fsdp: int = 1  # Data parallelism that also shards parameters and optimiser state (ZeRO-3).
  tensor: int = 1  # Model parallelism inside matmuls (heads, MLP width, vocabulary).
  # How the frozen towers are laid out (sharding.FROZEN_RULES): "fsdp" like the trainable tree (least
  # memory; every pass gathers them), "tensor" (split over the tensor axis only, replicated over
  # data and fsdp: no gathers) or "replicated" (whole on every device).
  frozen: str = "fsdp"

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "frozen", FROZEN_SHARDING)
    sizes = {k: v for k, v in dataclasses.asdict(self).items() if k != "frozen"}
    for name, size in sizes.items():
      if size == 0 or size < -1:
        fail(join(prefix, name), size, "must be a positive number of devices or -1 (the rest).")
    if list(sizes.values()).count(-1) > 1:
      fail(join(prefix, "fsdp" if self.fsdp == -1 else "tensor"), -1,
           "only one mesh axis may be -1.")


@dataclasses.dataclass(frozen=True)
class DatasetConfig(Section):
  """One training dataset: the shape of its examples and its share of every update."""

  batch_size: int = 8  # Global examples per update, over all processes.
  seq_len: int = 32  # T, tokens per example.
  max_images: int = 1  # N, image slots per example (1 for pairs and video).
  num_frames: int = 1  # F, frames per image slot (video > 1).
  loss_weight: float = 1.0  # lambda of this dataset's loss in the update (paper: 1, 0.2, 0.03).
  # data.source="arrayrecord" only:
  kind: str = ""  # One of KINDS: how a record becomes an example (data_pipelines/examples.py).
  path: str = ""  # Training shards: a directory of `*.array_record` files, or one file.
  eval_path: str = ""  # Held-out shards of the same kind (held-out losses, evaluation).
  p_next: float = 0.0  # interleaved: share of documents whose text sees the next image.
  max_pixels: int = 64_000_000  # Larger images (w * h) are skipped before decoding.
  random_flip: bool = True  # Training flips images with p = 0.5 (off where text says left/right).
  # Examples packed end to end into one row of pack * seq_len tokens (segment ids, positions and
  # image slots per example; data_pipelines/packing.py); batch_size counts examples and must be a
  # multiple of it. Short pairs and clips packed to the interleaved rows' length share one LM pass.
  pack: int = 1
  # Tokens per packed row (0: pack * seq_len). A longer row ends in padding (segment 0, no loss, no
  # image), so fewer examples per row still give the other datasets' row length: e.g. video at pack=4
  # and row_len=256 makes twice pack=8's rows, for a slice with 16 batch devices (joint pass).
  row_len: int = 0

  @property
  def row_tokens(self) -> int:
    """Tokens per row: row_len, or pack * seq_len."""
    return self.row_len or self.pack * self.seq_len

  def batch_shapes(self, image_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (global shape, dtype)} of the batches this dataset feeds the step: R = batch_size / pack
    rows of `row_tokens` tokens and pack * max_images image slots (data_pipelines/packing.py;
    packed rows add segments and positions)."""
    rows, t, n = self.batch_size // self.pack, self.row_tokens, self.pack * self.max_images
    shapes = {"tokens": ((rows, t), "int32"), "labels": ((rows, t), "int32"),
              "loss_mask": ((rows, t), "float32"), "phi": ((rows, t), "int32"),
              "images": ((rows, n, self.num_frames, image_size, image_size, 3), "uint8"),
              "image_mask": ((rows, n), "bool")}
    if self.pack > 1:
      shapes.update(segments=((rows, t), "int32"), positions=((rows, t), "int32"))
    return shapes

  def check(self, prefix: str) -> None:
    positive(prefix, self, "batch_size", "seq_len", "max_images", "num_frames", "max_pixels", "pack")
    if self.batch_size % self.pack:
      fail(join(prefix, "batch_size"), self.batch_size,
           f"must be a multiple of {join(prefix, 'pack')}={self.pack} (examples per packed row).")
    if self.row_len and self.row_len < self.pack * self.seq_len:
      fail(join(prefix, "row_len"), self.row_len,
           f"must hold pack * seq_len = {self.pack} * {self.seq_len} tokens (or be 0).")
    if self.row_len and self.pack == 1:
      fail(join(prefix, "row_len"), self.row_len, "pads packed rows only: set pack > 1, or make "
           "seq_len the row length.")
    non_negative(prefix, self, "loss_weight", "row_len")
    if not 0 <= self.p_next <= 1:
      fail(join(prefix, "p_next"), self.p_next, "must be a probability in [0, 1].")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
  """The training input: which datasets, how they are read, and how they make an update."""

  source: str = "synthetic"  # One of SOURCES: data_pipelines/synthetic.py, or ArrayRecord shards.
  tokenizer: str = ""  # arrayrecord: the sentencepiece model (its size is model.lm.vocab_size).
  seed: int = 0  # Shuffling and augmentation seed of the input streams.
  num_workers: int = 0  # arrayrecord: grain worker processes per dataset (0: in-process).
  accumulation: str = "all"  # One of ACCUMULATION: every dataset per update (paper), or in turn.
  # Datasets left out of training, comma-separated (the paper's ablation: "interleaved" = no M3W).
  exclude: str = ""
  datasets: dict[str, DatasetConfig] = dataclasses.field(default_factory=dict)

  def packs(self) -> dict[str, tuple[int, int]]:
    """{dataset: (examples per row, tokens per example)} of the datasets training reads."""
    return {name: (spec.pack, spec.seq_len) for name, spec in self.selected().items()}

  def selected(self) -> dict[str, DatasetConfig]:
    """The datasets training reads: `datasets` without those named in `exclude`."""
    excluded = {name.strip() for name in self.exclude.split(",") if name.strip()}
    return {name: spec for name, spec in self.datasets.items() if name not in excluded}

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "source", SOURCES)
    one_of(prefix, self, "accumulation", ACCUMULATION)
    non_negative(prefix, self, "num_workers")
    if not self.datasets:
      fail(join(prefix, "datasets"), {}, "must name at least one dataset.")
    unknown = sorted({n.strip() for n in self.exclude.split(",") if n.strip()} - set(self.datasets))
    if unknown:
      fail(join(prefix, "exclude"), self.exclude,
           f"names unknown dataset(s) {', '.join(unknown)}; the datasets are "
           f"{', '.join(self.datasets)}.")
    if not self.selected():
      fail(join(prefix, "exclude"), self.exclude, "leaves no dataset to train on.")
    if self.source == "arrayrecord":
      if not self.tokenizer:
        fail(join(prefix, "tokenizer"), self.tokenizer, "data.source=arrayrecord needs the "
             "sentencepiece model.")
      for name, spec in self.datasets.items():
        self._check_shards(join(prefix, f"datasets.{name}"), spec)

  @staticmethod
  def _check_shards(prefix: str, spec: DatasetConfig) -> None:
    one_of(prefix, spec, "kind", KINDS)
    if not spec.path:
      fail(join(prefix, "path"), spec.path, "data.source=arrayrecord needs the shards' path.")
    if spec.kind != "interleaved" and spec.max_images != 1:
      fail(join(prefix, "max_images"), spec.max_images, f"kind={spec.kind} holds one image per "
           "example; set it to 1.")
    if spec.kind != "video" and spec.num_frames != 1:
      fail(join(prefix, "num_frames"), spec.num_frames, f"kind={spec.kind} has still images; set "
           "it to 1.")
    if spec.seq_len < 5:
      fail(join(prefix, "seq_len"), spec.seq_len, "must be at least 5 (BOS, image, text, EOC, EOS).")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
  """AdamW (or SGD) on the trainable tree (FLAMINGO.md, Optimisation); training/optimizer.py builds
  it."""

  # One of OPTIMIZERS: "adamw" (paper), or "sgd": plain SGD, the update -learning_rate x gradient
  # (after clipping), e.g. for tests where Adam's normalised updates would hide a gradient's scale;
  # weight_decay, b1, b2 and eps are AdamW's only.
  name: str = "adamw"
  learning_rate: float = 1e-3  # Peak learning rate (paper: 1e-4).
  warmup_steps: int = 10  # Linear warm-up from 0 (paper: 5,000).
  schedule: str = "constant"  # After warm-up, one of SCHEDULES (paper: constant).
  decay_steps: int = 1000  # cosine only: the step where the decay ends.
  end_learning_rate: float = 0.0  # cosine only: the final learning rate.
  weight_decay: float = 0.1  # Decoupled weight decay; the resampler gets none (paper).
  clip_norm: float = 1.0  # Global gradient-norm clip.
  b1: float = 0.9  # Adam's first-moment decay.
  b2: float = 0.999  # Adam's second-moment decay.
  eps: float = 1e-8  # Adam's denominator epsilon.
  max_consecutive_skips: int = 1_000_000  # Non-finite updates skipped in a row before one applies.

  def check(self, prefix: str) -> None:
    positive(prefix, self, "learning_rate", "clip_norm", "eps", "max_consecutive_skips")
    non_negative(prefix, self, "warmup_steps", "end_learning_rate", "weight_decay")
    one_of(prefix, self, "name", OPTIMIZERS)
    one_of(prefix, self, "schedule", SCHEDULES)
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        fail(join(prefix, name), getattr(self, name), "must be in [0, 1).")
    if self.schedule == "cosine" and self.decay_steps <= self.warmup_steps:
      fail(join(prefix, "decay_steps"), self.decay_steps,
           f"must exceed {join(prefix, 'warmup_steps')}={self.warmup_steps} for the cosine decay.")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  """The training loop: its length, micro-batching, logs and checkpoints."""

  num_steps: int = 300  # Updates to run (a resumed run continues to this step).
  micro_batches: int = 1  # Each dataset's batch is split into this many slices (bounds activations).
  z_loss: float = 0.0  # Weight of logsumexp(logits)^2 (IDEFICS: 1e-3).
  frozen_dtype: str = "float32"  # One of DTYPES: how the frozen towers are stored.
  log_every: int = 25  # Steps between metric records.
  checkpoint_every: int = 100  # Steps between checkpoints.
  keep_checkpoints: int = 3  # Most recent checkpoints kept.
  keep_every: int = 0  # Also keep every k-th step's checkpoint forever (0: none).
  # task=flamingo: False also trains the LM's pretrained weights, with their optimiser state (the
  # paper's unfrozen-LM ablation); True (paper) trains only resampler, gated blocks, new rows.
  freeze_lm: bool = True
  # task=flamingo: "joint" runs every dataset's rows (packed to one row length, DatasetConfig.pack)
  # through the LM in one pass per micro-batch, each token's loss weighted lambda_d / (loss tokens of
  # its dataset d); "per_dataset" (the paper's accumulation, an ablation) runs one forward and
  # backward per dataset. Both give the same gradient.
  lm_pass: str = "per_dataset"

  def check(self, prefix: str) -> None:
    positive(prefix, self, "num_steps", "micro_batches", "log_every", "checkpoint_every",
             "keep_checkpoints")
    non_negative(prefix, self, "z_loss", "keep_every")
    one_of(prefix, self, "frozen_dtype", DTYPES)
    one_of(prefix, self, "lm_pass", LM_PASSES)


@dataclasses.dataclass(frozen=True)
class InitConfig(Section):
  """Pretrained weights (orbax trees; "" = initialised from `seed`): read by weights/pretrained.py."""

  vision_checkpoint: str = ""  # The `vision` tower (a contrastive export, a CLIP / SigLIP import).
  lm_checkpoint: str = ""  # A text-only LM (an `lm` export, a LLaMA import), any placement.
  flamingo_checkpoint: str = ""  # A whole model, trainable parts included (an IDEFICS import).

  def check(self, prefix: str) -> None:
    if self.flamingo_checkpoint and (self.vision_checkpoint or self.lm_checkpoint):
      fail(join(prefix, "flamingo_checkpoint"), self.flamingo_checkpoint,
           f"holds the towers too; leave {join(prefix, 'vision_checkpoint')} and "
           f"{join(prefix, 'lm_checkpoint')} empty.")


@dataclasses.dataclass(frozen=True)
class QuickstartConfig(Section):
  """`python -m flamingo_jax.tools.quickstart`: the three stages' lengths and settings that differ
  between them, and the final comparison."""

  contrastive_steps: int = 1200
  lm_steps: int = 500
  flamingo_steps: int = 1200
  contrastive_dataset: str = "pairs"  # The image-text dataset the vision tower pretrains on.
  # The contrastive stage's batch (its in-batch negatives) in place of the dataset's own.
  contrastive_batch_size: int = 64
  # The text-only LM stage's peak learning rate (the others use optimizer.learning_rate): the demo's
  # LM learns to copy names back from the page (`stages=binding`) only at a rate this high.
  lm_learning_rate: float = 5e-3
  # Datasets the LM stage leaves out besides data.exclude (comma-separated), and its own batch sizes
  # {dataset: size}: the demo's LM learns to read a name back by its colour word only on pages that
  # spell the colour out, and only with many of them per step (experiments/flamingo.py, binding).
  lm_exclude: str = ""
  lm_batch_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
  heldout_batches: int = 4  # Held-out batches of every dataset in the final comparison.

  def check(self, prefix: str) -> None:
    positive(prefix, self, "contrastive_steps", "lm_steps", "flamingo_steps", "heldout_batches",
             "contrastive_batch_size", "lm_learning_rate")
    for name, size in self.lm_batch_sizes.items():
      if size <= 0:
        fail(join(prefix, f"lm_batch_sizes.{name}"), size, "must be > 0.")


@dataclasses.dataclass(frozen=True)
class Config(Section):
  """A training run: what to train (task, model), where (mesh), on what (data), and how."""

  preset: str = ""  # The preset the config started from (reports only).
  task: str = "flamingo"  # One of TASKS: the paper's three stages.
  seed: int = 0  # Initialisation of every random-init parameter, frozen towers included.
  model: FlamingoConfig = FlamingoConfig()
  mesh: MeshConfig = MeshConfig()
  data: DataConfig = DataConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  train: TrainConfig = TrainConfig()
  init: InitConfig = InitConfig()
  quickstart: QuickstartConfig = QuickstartConfig()

  def _check_joint(self, prefix: str) -> None:
    """train.lm_pass=joint: a flamingo task whose datasets' packed rows have one length."""
    if self.task != "flamingo":
      fail(join(prefix, "train.lm_pass"), "joint", f"needs task=flamingo (task={self.task}); use "
           "per_dataset.")
    lengths = {name: spec.row_tokens for name, spec in self.data.selected().items()}
    if len(set(lengths.values())) > 1:
      name, length = max(lengths.items(), key=lambda kv: kv[1])
      short = next(n for n, l in lengths.items() if l != length)
      fail(join(prefix, f"data.datasets.{short}.pack"), self.data.datasets[short].pack,
           f"gives rows of {lengths[short]} tokens (row_len or pack * seq_len) but {name}'s are "
           f"{length}: "
           "train.lm_pass=joint needs one row length ("
           + ", ".join(f"{n}: {l}" for n, l in lengths.items()) + ").")

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "task", TASKS)
    micro = self.train.micro_batches
    if self.task == "contrastive" and micro != 1:
      fail(join(prefix, "train.micro_batches"), micro, "must be 1 for task=contrastive: the "
           "in-batch negatives of a micro-batch would change the loss.")
    for name, spec in self.data.datasets.items():
      if (spec.batch_size // spec.pack) % micro:
        fail(join(prefix, f"data.datasets.{name}.batch_size"), spec.batch_size,
             f"must give a number of packed rows (batch_size / pack = {spec.batch_size} / "
             f"{spec.pack}) divisible by {join(prefix, 'train.micro_batches')}={micro}.")
    if self.train.lm_pass == "joint":
      self._check_joint(prefix)
    if self.data.source == "synthetic":
      for name, spec in self.data.datasets.items():
        if spec.seq_len < 3:
          fail(join(prefix, f"data.datasets.{name}.seq_len"), spec.seq_len,
               "must hold one synthetic chunk of 3 tokens (<image> word <EOC>).")

  def with_absolute_paths(self) -> Config:
    """The config with every local path (init.*, data.tokenizer, dataset shards) made absolute, so
    a recorded run means the same files from any working directory."""
    def absolute(path: str) -> str:
      return path if not path or "://" in path else os.path.abspath(path)
    overrides = {f"init.{name}": absolute(getattr(self.init, name))
                 for name in ("vision_checkpoint", "lm_checkpoint", "flamingo_checkpoint")}
    overrides["data.tokenizer"] = absolute(self.data.tokenizer)
    for name, spec in self.data.datasets.items():
      overrides[f"data.datasets.{name}.path"] = absolute(spec.path)
      overrides[f"data.datasets.{name}.eval_path"] = absolute(spec.eval_path)
    return self.replace(overrides)
