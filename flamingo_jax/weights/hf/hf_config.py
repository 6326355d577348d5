"""A Hugging Face checkpoint's json files -> our config fields and token ids.

`config.json` -> LMConfig (`llama_config`), VisionConfig (`vision_config`: CLIP / SigLIP) or the whole
FlamingoConfig (`idefics_config`), so shapes are never transcribed by hand; the tokenizer files'
added tokens -> the ids of `<image>` and `<EOC>` (`special_token_ids`). Unsupported features are
errors naming the json field and our config field.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flamingo_jax.config import (FlamingoConfig, LMConfig, ResamplerConfig, RopeScalingConfig,
                                 VisionConfig, XAttnConfig)
from flamingo_jax.config.model import ROPE_SCALINGS


def read_json(checkpoint_dir: str, name: str) -> dict[str, Any] | None:
  """`checkpoint_dir/name` parsed, or None when there is no such file."""
  path = os.path.join(checkpoint_dir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_hf_config(checkpoint_dir: str) -> dict[str, Any]:
  hf = read_json(checkpoint_dir, "config.json")
  if hf is None:
    raise ValueError(f"{checkpoint_dir} has no config.json; import a `save_pretrained` directory.")
  return hf


# Tokenizer files that list a checkpoint's added tokens (all optional; they must agree).
TOKENIZER_FILES = ("added_tokens.json", "tokenizer_config.json", "tokenizer.json")


def checkpoint_token_ids(checkpoint_dir: str) -> dict[str, int]:
  """Token -> id of every added token the checkpoint's tokenizer files list (`added_tokens.json`,
  `tokenizer_config.json`'s `added_tokens_decoder`, `tokenizer.json`'s `added_tokens`); {} when
  there are none. Two files giving one token different ids is an error naming both."""
  found: dict[str, tuple[int, str]] = {}
  for name in TOKENIZER_FILES:
    data = read_json(checkpoint_dir, name)
    if data is None:
      continue
    if name == "added_tokens.json":
      pairs = data.items()
    elif name == "tokenizer_config.json":
      pairs = ((entry["content"], int(i)) for i, entry in data.get("added_tokens_decoder", {}).items())
    else:
      pairs = ((entry["content"], entry["id"]) for entry in data.get("added_tokens", ()))
    for token, token_id in pairs:
      if token in found and found[token][0] != token_id:
        raise ValueError(f"{checkpoint_dir}: {found[token][1]} gives {token} id {found[token][0]} "
                         f"but {name} gives {token_id}.")
      found[token] = (int(token_id), name)
  return {token: token_id for token, (token_id, _) in found.items()}


def special_token_ids(added: Mapping[str, int], vocab_size: int, eos_id: int) -> tuple[int, int]:
  """(<image> id, <EOC> id) for a checkpoint whose tokenizer lists `added` tokens (token -> id).

  Each takes the checkpoint's own id when it has the token. Otherwise: with no added tokens beyond
  the vocabulary, ours (V, V + 1); with some (IDEFICS: <fake_token_around_image>, <image>), the
  checkpoint has no <EOC> and its EOS ends a chunk, as in its training documents.
  """
  new = {token: i for token, i in added.items() if i >= vocab_size}
  image = added.get("<image>", vocab_size)
  eoc = added.get("<EOC>", eos_id if new else vocab_size + 1)
  by_id = {i: token for token, i in added.items()}
  for token, token_id in (("<image>", image), ("<EOC>", eoc)):
    if by_id.get(token_id, token) != token:
      raise ValueError(f"{token} would get id {token_id}, which the checkpoint's tokenizer gives to "
                       f"{by_id[token_id]}; add {token} to its added tokens.")
  return image, eoc


class _HFConfig(dict):
  """config.json's fields; a missing required one is an error naming it."""

  def __missing__(self, key):
    raise ValueError(f"config.json has no `{key}`; is this checkpoint of the family being imported?")


def llama_config(hf: Mapping[str, Any]) -> LMConfig:
  """Our LMConfig from a LlamaForCausalLM `config.json`; unsupported features are errors."""
  hf = _HFConfig(hf)
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if head_dim * heads != hf["hidden_size"]:
    raise ValueError(f"config.json has head_dim={head_dim} with {heads} heads and hidden_size="
                     f"{hf['hidden_size']}; model.lm needs head_dim = width / num_heads.")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"config.json sets {flag}=true; model.lm has no biases.")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json has hidden_act={hf['hidden_act']}; model.lm uses silu (SwiGLU).")
  # transformers >= 5 writes `rope_parameters` (with rope_theta inside); older ones `rope_scaling`.
  rope = _HFConfig(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type == "default":
    scaling = RopeScalingConfig()
  elif rope_type == "linear":
    scaling = RopeScalingConfig("linear", factor=float(rope["factor"]))
  elif rope_type == "llama3":
    scaling = RopeScalingConfig(
        "llama3", factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_positions=int(rope["original_max_position_embeddings"]))
  else:
    raise ValueError(f"config.json uses rope_type={rope_type}; model.lm.rope_scaling supports "
                     f"{', '.join(ROPE_SCALINGS)} (default = none).")
  return LMConfig(
      vocab_size=hf["vocab_size"], width=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      mlp_dim=hf["intermediate_size"],
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), rope_scaling=scaling,
      norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings")))


_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu": "gelu", "relu": "relu"}
# Image statistics when the checkpoint has no preprocessor_config.json.
_PIXEL_STATS = {"clip": (VisionConfig.pixel_mean, VisionConfig.pixel_std),  # CLIP's: our defaults.
                "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def vision_config(family: str, hf: Mapping[str, Any],
                  preprocessor: Mapping[str, Any] | None = None) -> VisionConfig:
  """Our VisionConfig from a CLIP / SigLIP `config.json` (the `vision_config` part of a dual-tower
  config) and, when given, `preprocessor_config.json`'s image_mean / image_std."""
  hf = _HFConfig(hf.get("vision_config", hf))
  act = hf.get("hidden_act", "quick_gelu" if family == "clip" else "gelu_pytorch_tanh")
  if act not in _ACTIVATIONS:
    raise ValueError(f"config.json has hidden_act={act}; known: {', '.join(_ACTIVATIONS)}.")
  mean, std = _PIXEL_STATS[family]
  if preprocessor:
    mean, std = preprocessor.get("image_mean", mean), preprocessor.get("image_std", std)
  clip = family == "clip"
  return VisionConfig(
      image_size=hf["image_size"], patch_size=hf["patch_size"], width=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      mlp_dim=hf["intermediate_size"], activation=_ACTIVATIONS[act], class_token=clip,
      pre_norm=clip, post_norm=not clip, patch_bias=not clip,
      norm_eps=hf.get("layer_norm_eps", 1e-5), pixel_mean=tuple(mean), pixel_std=tuple(std))


_ALPHA_INITIALIZERS = {"zeros": "zeros", "ones": "ones", "normal": "normal", "gaussian": "normal",
                       "random": "normal"}


def idefics_config(hf: Mapping[str, Any], added_tokens: Mapping[str, int],
                   preprocessor: Mapping[str, Any] | None = None) -> FlamingoConfig:
  """Our FlamingoConfig from an IdeficsForVisionText2Text `config.json`, the added tokens of its
  tokenizer (`checkpoint_token_ids`) and, when given, `preprocessor_config.json`.

  LM: the LLaMA fields (`llama_config`). Vision: CLIP layout, features = last_hidden_state (its
  post_layernorm only normalises the pooled class token). Perceiver: `use_resampler` must be on;
  width = the vision width, no time embeddings, ReLU FFW of 4x, LayerNorm qk norms. Gated blocks:
  before LM layer i when i % cross_layer_interval == 0 (our every / offset 0), the LM's heads and
  head width, RMSNorm text norms, no visual norm, SwiGLU FFW of the LM's MLP width, RMSNorm qk norms.
  """
  hf = _HFConfig(hf)
  lm = llama_config(hf)
  if not hf.get("use_resampler", False):
    raise ValueError("config.json has use_resampler=false: the gated blocks would attend to all "
                     "vision features; our model always resamples (model.resampler).")
  vision = _HFConfig(hf["vision_config"])
  vision = vision_config("clip", {**vision, "hidden_size": vision.get("embed_dim", 768),
                                  "hidden_act": vision.get("hidden_act", "gelu")}, preprocessor)
  perceiver = _HFConfig(hf["perceiver_config"])
  resampler = ResamplerConfig(
      width=vision.width, num_layers=perceiver.get("resampler_depth", 6),
      num_heads=perceiver.get("resampler_n_heads", 16),
      head_dim=perceiver.get("resampler_head_dim", 96),
      num_latents=perceiver.get("resampler_n_latents", 64), ffw_mult=4, ffw_activation="relu",
      num_time_embeddings=1, interpolate_time_embeddings=False, time_embeddings=False,
      qk_norm=bool(perceiver.get("qk_layer_norms_perceiver", False)))
  every = hf.get("cross_layer_interval", 1)
  if lm.num_layers % every:
    raise ValueError(f"config.json has num_hidden_layers={lm.num_layers} and cross_layer_interval="
                     f"{every}; IDEFICS needs the interval to divide the layers (model.xattn.every).")
  alpha_type = hf.get("alpha_type", "float")
  if alpha_type not in ("float", "vector"):
    raise ValueError(f"config.json has alpha_type={alpha_type}; model.xattn.gate_shape supports "
                     "float (scalar) and vector.")
  alpha_init = hf.get("alpha_initializer", "zeros")
  if alpha_init not in _ALPHA_INITIALIZERS:
    raise ValueError(f"config.json has alpha_initializer={alpha_init}; model.xattn.alpha_init "
                     f"supports {', '.join(_ALPHA_INITIALIZERS)}.")
  xattn = XAttnConfig(
      every=every, offset=0, num_heads=lm.num_heads, head_dim=lm.head_dim, ffw_activation="silu",
      gate_shape="scalar" if alpha_type == "float" else "vector",
      qk_norm=bool(hf.get("qk_layer_norms", False)), norm="rms", norm_eps=lm.norm_eps,
      visual_norm=False, ffw_gated=True, ffw_dim=lm.mlp_dim,
      alpha_init=_ALPHA_INITIALIZERS[alpha_init],
      alpha_init_std=float(hf.get("alphas_initializer_range", 0.0)))
  extra = hf.get("additional_vocab_size", 0)
  eos = hf.get("eos_token_id", 2)  # An int, or a list whose first id is the document end.
  image, eoc = special_token_ids(added_tokens, lm.vocab_size, eos[0] if isinstance(eos, list) else eos)
  config = FlamingoConfig(vision=vision, lm=lm, resampler=resampler, xattn=xattn,
                          num_extra_tokens=extra, image_token=image, eoc_token=eoc)
  return FlamingoConfig.from_dict(config)
