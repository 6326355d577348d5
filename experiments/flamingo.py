r"""Flamingo presets: `get_config("<preset>[,data=demo]")` with preset one of PRESETS.

  tiny         a few million parameters; runs in seconds on one CPU core (tests, quickstart).
  bench        the model benchmark's shape (benchmarks/model.py).
  flamingo_3b  | the paper's shapes (FLAMINGO.md, Table 4/5). Where the paper is silent (FFN width,
  flamingo_9b  | vocabulary, vision tower, cross-attention heads) the values are chosen so that each
  flamingo_80b | component's parameter count lands within 5% of the paper's table; see README.md.

`data=demo` trains on the bundled demo corpus (`python -m data_pipelines.demo --out workdirs/demo_corpus`;
the quickstart builds it) instead of the synthetic stream; it fits the `tiny` model (32 px, 512 tokens).
`corpus=DIR` reads (and lets the quickstart build) the demo corpus in DIR instead. `stages=binding`
(with data=demo) trains the quickstart's LM and Flamingo stages on the naming pages alone
(`_binding_stages`): in-context binding with the LM frozen, at the cost of everything else.

Every field is documented once, in flamingo_jax/config/ (model.py, run.py). Override from the
command line:
  python -m flamingo_jax.tools.summary --config experiments/flamingo.py:tiny --config.model.lm.num_layers=6
"""

import os

import ml_collections

from data_pipelines import demo
from flamingo_jax.config import Config, DatasetConfig
from flamingo_jax.config.args import parse_arg

PRESETS = ("tiny", "bench", "flamingo_3b", "flamingo_9b", "flamingo_80b")
DEMO_CORPUS = "workdirs/demo_corpus"  # Where `data=demo` configs read the bundled corpus.
# The demo's binding pages: the naming kinds that always (or never) spell the colour out.
BINDING_NAMING = tuple(kind for kind, (spelled, _) in demo.NAMING.items() if spelled is not None)

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
        resampler=dict(width=64, num_layers=2, num_heads=4, head_dim=16, num_latents=16,
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
  # The paper's recipe (FLAMINGO.md, Data); batch sizes are per update, over all hosts. Pairs and
  # clips are packed 8 to a row of the documents' 256 tokens, so one LM pass takes all three
  # (train.lm_pass=joint; a slice whose data x fsdp devices do not divide video's 8 rows needs
  # train.lm_pass=per_dataset, best with mesh.frozen=tensor).
  return dict(
      interleaved=dict(batch_size=256, seq_len=256, max_images=5, num_frames=1, loss_weight=1.0),
      pairs=dict(batch_size=512, seq_len=32, max_images=1, num_frames=1, loss_weight=0.2, pack=8),
      video=dict(batch_size=64, seq_len=32, max_images=1, num_frames=8, loss_weight=0.03,
                 pack=8))


def demo_data(root: str) -> dict:
  """The bundled demo corpus (`python -m data_pipelines.demo --out ROOT`) for the `tiny` model: the
  three kinds and the naming pages (in-context binding; excluded unless asked for); small batches of
  short rows (a pair's caption is at most 6 tokens), no flips (mirrored digits and "moving left"
  clips would contradict their captions); `eval_path`: the held-out shards.
  Where the paper's recipe does not fit this corpus it is changed: every sentence of a demo page
  follows the image it describes, so p_next = 0 (the paper's 0.5 would show half the pages' text the
  wrong digit); pairs weigh as much as pages (the paper's 0.2 left the tiny model naming digits at
  chance within the quickstart's steps)."""
  def dataset(kind, batch_size, seq_len, max_images, num_frames, loss_weight, p_next=0.0):
    return dict(kind=kind, path=os.path.join(root, "train", kind),
                eval_path=os.path.join(root, "eval", kind), batch_size=batch_size, seq_len=seq_len,
                max_images=max_images, num_frames=num_frames, loss_weight=loss_weight,
                p_next=p_next, random_flip=False)

  def naming(kind, seq_len, max_images):  # Names read back by colour: p_next stays 0.
    spec = dataset("interleaved", 8, seq_len, max_images, 1, 1.0)
    spec.update(path=os.path.join(root, kind, "train"), eval_path=os.path.join(root, kind, "eval"))
    return spec
  # Trained on by default: interleaved, pairs and video. The naming pages taught no binding within
  # the quickstart's budget (docs/results.md): `stages=binding` trains on the dense kinds alone,
  # and `--config.data.exclude=` brings every kind in.
  return dict(source="arrayrecord", tokenizer=os.path.join(root, "tokenizer.model"),
              exclude=",".join(("naming",) + BINDING_NAMING), datasets=dict(
                  interleaved=dataset("interleaved", 8, 64, 4, 1, 1.0),
                  pairs=dataset("pairs", 32, 12, 1, 1, 1.0),
                  video=dataset("video", 4, 20, 1, 4, 0.03),
                  naming=naming("naming", 80, 9),
                  **{kind: naming(kind, 96, 16) for kind in BINDING_NAMING}))


def _binding_stages(config: ml_collections.ConfigDict) -> None:
  """`stages=binding`: the quickstart's LM and Flamingo stages on the naming pages alone, long
  enough for in-context binding with the LM frozen (docs/results.md): the LM learns to read a name
  back by its colour word on 32 spelled-out pages per step, then the Flamingo stage learns to key it
  by the image on both kinds."""
  others = ",".join(name for name in config.data.datasets if name not in BINDING_NAMING)
  config.data.exclude = others
  config.quickstart.update(dict(lm_steps=1500, flamingo_steps=800,
                                lm_exclude="naming_images",
                                lm_batch_sizes={"naming_words": 32}))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  """`<preset>[,data=demo[,corpus=DIR]]`: the preset's model, data and training settings (the rest:
  defaults)."""
  args = parse_arg(arg, data="synthetic", corpus=DEMO_CORPUS, stages="all")
  preset = args["preset"]
  paper = preset.startswith("flamingo_")
  config = Config().as_config_dict()
  config.preset = preset
  config.model.update_from_flattened_dict(
      {f"{part}.{k}": v for part, fields in _model(preset).items() for k, v in fields.items()})
  if args["data"] not in ("demo", "synthetic"):
    raise ValueError(f"Config argument data={args['data']!r}: use synthetic or demo.")
  data = demo_data(args["corpus"]) if args["data"] == "demo" else dict(datasets=_datasets(preset))
  # Every dataset field present, so `--config.data.datasets.<name>.<field>=` overrides any of them.
  data["datasets"] = {name: DatasetConfig(**spec).to_dict()
                      for name, spec in data["datasets"].items()}
  config.data.update(data)
  if args["stages"] not in ("all", "binding"):
    raise ValueError(f"Config argument stages={args['stages']!r}: use all or binding.")
  if args["stages"] == "binding":
    if args["data"] != "demo":
      raise ValueError("Config argument stages=binding needs data=demo (the naming pages).")
    _binding_stages(config)
  elif args["data"] == "demo":  # The contrastive and Flamingo stages' peak rate (5e-3 diverged;
    config.optimizer.learning_rate = 2e-3  # stages=binding keeps the default its figures used).
  if preset == "bench":  # On one CPU host (benchmarks/peers.py, BENCHMARKS.md): unrolled layers
    # step ~6% faster than scanned ones; 32 positions of the loss at a time cut the step's buffers
    # by the [B, T, 32002] logits, their softmax and gradient (~0.2 GB) and its time by ~3%.
    config.model.execution.update(dict(scan_layers=False, loss_chunk=32))
  if paper:  # The paper (FLAMINGO.md): bf16 activations, gradients and frozen weights.
    config.model.execution.update(dict(dtype="bfloat16", remat_policy="full"))
    config.optimizer.update(dict(learning_rate=1e-4, warmup_steps=5000, decay_steps=500_000))
    config.train.update(dict(num_steps=500_000, frozen_dtype="bfloat16", log_every=50,
                             checkpoint_every=1000, lm_pass="joint"))
  return config
