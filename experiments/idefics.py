r"""IDEFICS (v1) presets: `get_config("<preset>")` with preset one of PRESETS.

  idefics_9b   HuggingFaceM4/idefics-9b's shapes: LLaMA-7B + CLIP ViT-H/14 + perceiver + gated blocks
  idefics_80b  HuggingFaceM4/idefics-80b's: LLaMA-65B + the same vision tower and perceiver

The model fields come from IdeficsConfig-style fields (transformers' IdeficsConfig defaults are the 9B
LM; the ViT-H/14 tower is 1280 wide, 32 layers, 16 heads, MLP 5120, 14-px patches at 224 px) through the
importer's own mapping (`weights.hf.hf_config.idefics_config`), so a preset and an imported checkpoint agree
on every field. Real checkpoints: import them (`python -m flamingo_jax.weights.hf.importer idefics`) and use
the fields the command prints; they read qk_layer_norms / alpha settings from config.json, which
these presets leave at IdeficsConfig's defaults (off / zeros; qk norms are a few thousand parameters).
Everything but the model (optimizer, training, data, mesh) is experiments/flamingo.py's paper setting
for the LM of the same size.

  python -m flamingo_jax.tools.summary --config experiments/idefics.py:idefics_9b
"""

import ml_collections

from experiments import flamingo
from flamingo_jax.config.args import parse_arg
from flamingo_jax.weights.hf.hf_config import idefics_config

_VISION = dict(embed_dim=1280, image_size=224, patch_size=14, num_hidden_layers=32,
               num_attention_heads=16, intermediate_size=5120, hidden_act="gelu")
_PERCEIVER = dict(use_resampler=True, resampler_n_latents=64, resampler_depth=6,
                  resampler_n_heads=16, resampler_head_dim=96)
# LLaMA-7B / LLaMA-65B (vocabulary 32000), and the paper preset whose training settings they reuse.
_LM = {
    "idefics_9b": (dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                        intermediate_size=11008, rms_norm_eps=1e-6), "flamingo_9b"),
    "idefics_80b": (dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                         intermediate_size=22016, rms_norm_eps=1e-5), "flamingo_80b"),
}
PRESETS = tuple(_LM)
# IDEFICS' tokenizer adds these two tokens after LLaMA's 32000 (its additional_vocab_size rows).
_ADDED_TOKENS = {"<fake_token_around_image>": 32000, "<image>": 32001}


def hf_fields(preset: str) -> dict:
  """The preset as IdeficsConfig fields (a config.json)."""
  if preset not in _LM:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
  return dict(vocab_size=32000, additional_vocab_size=2, hidden_act="silu", cross_layer_interval=4,
              use_resampler=True, eos_token_id=2, vision_config=_VISION,
              perceiver_config=_PERCEIVER, **_LM[preset][0])


def get_config(arg: str = "idefics_9b") -> ml_collections.ConfigDict:
  preset = parse_arg(arg)["preset"]
  model = idefics_config(hf_fields(preset), _ADDED_TOKENS)
  config = flamingo.get_config(_LM[preset][1])
  config.preset = preset
  execution = config.model.execution.to_dict()
  config.model = model.as_config_dict()
  config.model.execution.update(execution)
  return config
