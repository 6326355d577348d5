r"""Flamingo presets: `get_config("<preset>[,demo]")` with preset one of PRESETS.

  tiny         a few million parameters; runs in seconds on one CPU core (tests, quickstart).
  bench        the model benchmark's shape (benchmarks/model.py).
  flamingo_3b  | the paper's shapes (FLAMINGO.md, Table 4/5). Where the paper is silent (FFN width,
  flamingo_9b  | vocabulary, vision tower, cross-attention heads) the values are chosen so that each
  flamingo_80b | component's parameter count lands within 5% of the paper's table; see README.md.

`,demo` trains on the bundled demo corpus (`python -m data_pipelines.demo --out workdirs/demo_corpus`;
the quickstart builds it) instead of the synthetic stream; it fits the `tiny` model (32 px, 512 tokens).

Every model field is documented once, in flamingo_jax/config.py. Override from the command line:
  python -m flamingo_jax.summary --config experiments/flamingo.py:tiny --config.model.lm.num_layers=6
"""

import os

import ml_collections

from flamingo_jax.config import FlamingoConfig

PRESETS = ("tiny", "bench", "flamingo_3b", "flamingo_9b", "flamingo_80b")
DEMO_CORPUS = "workdirs/demo_corpus"  # Where `,demo` configs read the bundled corpus.

# Vision tower for the paper presets: the paper's NFNet-F6 (435M, 288 px) has no public weights; a
# SigLIP-layout ViT of the same width and size (1536 wide, 15 layers, 16-px patches at 288 px: 427M)
# stands in. Import CLIP / SigLIP towers with their own shapes instead (model.vision.*).
_PAPER_VISION = dict(image_size=288, patch_size=16, width=1536, num_layers=15, num_heads=16,
                     mlp_dim=6144, activation="gelu_tanh", class_token=False, pre_norm=False,
                     post_norm=True, patch_bias=True, norm_eps=1e-6, pixel_mean=(0.5, 0.5, 0.5),
                     pixel_std=(0.5, 0.5, 0.5))
# Resampler: 6 layers, width 1536, 64 latents, Squared-ReLU FFW of 4x. FLAMINGO.md states 16 heads of
# 96, which gives 170M against the table's 194M; 16 heads of 128 (inner width 2048, as lucidrains and
# IDEFICS separate head width from model width) gives 189M.
_PAPER_RESAMPLER = dict(width=1536, num_layers=6, num_heads=16, head_dim=128, num_latents=64,
                        ffw_mult=4, num_time_embeddings=8)
# LM (Chinchilla shapes from the paper; SwiGLU width, vocabulary 32k and multi-head attention chosen)
# and gated blocks (every n-th layer from the first; heads chosen): width, layers, heads, SwiGLU width,
# xattn every, xattn heads, xattn head width.
_PAPER_LM = {
    "flamingo_3b": (2048, 24, 16, 5632, 1, 16, 128),
    "flamingo_9b": (4096, 40, 32, 8448, 4, 16, 128),
    "flamingo_80b": (8192, 80, 64, 24576, 7, 64, 256),
}


def _model(preset: str) -> dict:
  if preset == "tiny":
    return dict(
        vision=dict(image_size=32, patch_size=8, width=64, num_layers=2, num_heads=4, mlp_dim=128),
        lm=dict(vocab_size=512, width=64, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=128),
        resampler=dict(width=64, num_layers=2, num_heads=4, head_dim=16, num_latents=64,
                       num_time_embeddings=8),
        xattn=dict(every=2, num_heads=4, head_dim=16))
  if preset == "bench":
    return dict(
        vision=dict(image_size=224, patch_size=32, width=384, num_layers=6, num_heads=6,
                    mlp_dim=1536),
        lm=dict(vocab_size=32000, width=512, num_layers=8, num_heads=8, num_kv_heads=8,
                mlp_dim=1376),
        resampler=dict(width=384, num_layers=2, num_heads=6, head_dim=64, num_latents=64,
                       num_time_embeddings=1),
        xattn=dict(every=1, num_heads=8, head_dim=64))
  if preset in _PAPER_LM:
    width, layers, heads, mlp, every, x_heads, x_head_dim = _PAPER_LM[preset]
    return dict(vision=_PAPER_VISION, resampler=_PAPER_RESAMPLER,
                lm=dict(vocab_size=32000, width=width, num_layers=layers, num_heads=heads,
                        num_kv_heads=heads, mlp_dim=mlp),
                xattn=dict(every=every, num_heads=x_heads, head_dim=x_head_dim))
  raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")


def _datasets(preset: str) -> dict:
  """Per-dataset stream settings: global batch size, tokens T, image slots N, frames F, lambda."""
  if preset == "tiny":
    return dict(
        interleaved=dict(batch_size=8, seq_len=32, max_images=2, num_frames=1, loss_weight=1.0),
        pairs=dict(batch_size=8, seq_len=12, max_images=1, num_frames=1, loss_weight=0.2),
        video=dict(batch_size=4, seq_len=12, max_images=1, num_frames=4, loss_weight=0.03))
  if preset == "bench":
    return dict(interleaved=dict(batch_size=8, seq_len=128, max_images=2, num_frames=1,
                                 loss_weight=1.0))
  # The paper's recipe (FLAMINGO.md, Data); batch sizes are per update, over all hosts.
  return dict(
      interleaved=dict(batch_size=256, seq_len=256, max_images=5, num_frames=1, loss_weight=1.0),
      pairs=dict(batch_size=512, seq_len=32, max_images=1, num_frames=1, loss_weight=0.2),
      video=dict(batch_size=64, seq_len=32, max_images=1, num_frames=8, loss_weight=0.03))


def _demo_data(root: str) -> dict:
  """The demo corpus's streams (experiments/data.py) with their held-out twins."""
  from experiments.data import demo_data_config
  train, held_out = demo_data_config(root, "train"), demo_data_config(root, "eval")
  return dict(
      source="arrayrecord", tokenizer=os.path.join(root, "tokenizer.model"), seed=train.seed,
      num_workers=train.num_workers, accumulation=train.accumulation,
      datasets={name: {**spec.to_dict(), "eval_path": held_out.datasets[name].path}
                for name, spec in train.datasets.items()})


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  arg, *options = arg.split(",")
  config = ml_collections.ConfigDict()
  config.preset = arg
  config.task = "flamingo"  # "contrastive" / "lm" / "flamingo": the paper's three stages (tasks.py).
  config.seed = 0  # Initialisation of every random-init parameter (frozen towers included).
  config.model = FlamingoConfig().as_config_dict()
  config.model.update_from_flattened_dict(
      {f"{part}.{k}": v for part, fields in _model(arg).items() for k, v in fields.items()})
  paper = arg.startswith("flamingo_")
  if paper:  # The paper: activations, gradients and frozen weights in bf16 (trainable in f32).
    config.model.execution.update(dict(dtype="bfloat16", remat_policy="full"))

  # Device mesh: sizes of the (data, fsdp, tensor) axes; one may be -1 to take the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      # "synthetic" (data_pipelines/synthetic.py) or "arrayrecord" (data_pipelines/mixture.py, which
      # documents the dataset fields; each dataset also names its held-out shards in `eval_path`).
      source="synthetic",
      tokenizer="",  # arrayrecord: the sentencepiece model (its size must be model.lm.vocab_size).
      seed=0,  # Shuffling and augmentation seed of the input streams.
      num_workers=0,  # arrayrecord: grain worker processes per dataset (0: in-process).
      accumulation="all",  # "all": a batch of every dataset per update (paper); "round_robin".
      datasets=_datasets(arg),
  ))
  if "demo" in options:
    config.data = ml_collections.ConfigDict(_demo_data(DEMO_CORPUS))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4 if paper else 1e-3,  # Peak learning rate (paper: 1e-4).
      warmup_steps=5000 if paper else 10,  # Linear warm-up from 0 (paper: 5k steps).
      schedule="constant",  # After warm-up: "constant" (paper) or "cosine".
      decay_steps=500_000 if paper else 1000,  # Cosine only: step where decay ends.
      end_learning_rate=0.0,  # Cosine only: final learning rate.
      weight_decay=0.1,  # AdamW decoupled weight decay; the resampler gets none (paper).
      clip_norm=1.0,  # Global gradient-norm clip.
      b1=0.9, b2=0.999, eps=1e-8,  # Adam moments.
      max_consecutive_skips=1_000_000,  # Non-finite updates skipped in a row before one is applied.
  ))

  config.train = ml_collections.ConfigDict(dict(
      num_steps=500_000 if paper else 300,  # Updates to run (a resumed run continues to this step).
      micro_batches=1,  # Each dataset's batch is split into this many slices (bounds activations).
      z_loss=0.0,  # Weight of logsumexp(logits)^2 (IDEFICS: 1e-3).
      frozen_dtype="bfloat16" if paper else "float32",  # Storage dtype of the frozen towers.
      log_every=50 if paper else 25,  # Steps between metric records.
      checkpoint_every=1000 if paper else 100,  # Steps between checkpoints.
      keep_checkpoints=3,  # Most recent checkpoints kept.
      keep_every=0,  # Also keep every k-th step's checkpoint forever (0: none).
  ))

  # Pretrained frozen towers (orbax checkpoints of the `vision` / `lm` subtrees), "" for random;
  # flamingo_checkpoint: a whole model, trainable parts included (`import_weights idefics`).
  config.init = ml_collections.ConfigDict(dict(vision_checkpoint="", lm_checkpoint="",
                                               flamingo_checkpoint=""))

  # flamingo_jax.quickstart: steps of each stage and the held-out evaluation.
  config.quickstart = ml_collections.ConfigDict(dict(
      contrastive_steps=150, lm_steps=300, flamingo_steps=600,
      contrastive_dataset="pairs",  # The image-text dataset the vision tower pretrains on.
      heldout_batches=4,  # Held-out batches of every dataset in the final comparison.
  ))
  return config
