r"""Flamingo presets: `get_config("<preset>")` with preset one of PRESETS.

  tiny         a few million parameters; runs in seconds on one CPU core (tests, quickstart).
  bench        the model benchmark's shape (benchmarks/model.py).
  flamingo_3b  | the paper's shapes (FLAMINGO.md, Table 4/5). Where the paper is silent (FFN width,
  flamingo_9b  | vocabulary, vision tower, cross-attention heads) the values are chosen so that each
  flamingo_80b | component's parameter count lands within 5% of the paper's table; see README.md.

Every model field is documented once, in flamingo_jax/config.py. Override from the command line:
  python -m flamingo_jax.summary --config experiments/flamingo.py:tiny --config.model.lm.num_layers=6
"""

import ml_collections

from flamingo_jax.config import FlamingoConfig

PRESETS = ("tiny", "bench", "flamingo_3b", "flamingo_9b", "flamingo_80b")

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


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = arg
  config.seed = 0
  config.model = FlamingoConfig().as_config_dict()
  config.model.update_from_flattened_dict(
      {f"{part}.{k}": v for part, fields in _model(arg).items() for k, v in fields.items()})
  paper = arg.startswith("flamingo_")
  config.data = ml_collections.ConfigDict(dict(
      batch_size={"tiny": 4, "bench": 8}.get(arg, 8),  # Per update, over all hosts.
      seq_len={"tiny": 32, "bench": 128}.get(arg, 256),  # Text tokens per example (M3W: 256).
      num_images={"tiny": 2, "bench": 2}.get(arg, 5),  # Image slots per example (M3W: 5).
      num_frames=1,  # Frames per media item (video: 8 in training).
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4 if paper else 1e-3,
      num_steps=300,  # Quickstart optimisation steps.
  ))
  return config
