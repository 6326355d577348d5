r"""Pretrained weights from Hugging Face safetensors checkpoints -> our parameter trees (orbax).

  python -m flamingo_jax.import_weights llama  --checkpoint DIR --out OUT [--dtype float32]
  python -m flamingo_jax.import_weights clip   --checkpoint DIR --out OUT
  python -m flamingo_jax.import_weights siglip --checkpoint DIR --out OUT
  python -m flamingo_jax.import_weights idefics --checkpoint DIR --out OUT

DIR is a `save_pretrained(..., safe_serialization=True)` directory: `config.json` and either
`model.safetensors` or shards listed by `model.safetensors.index.json` (`weight_map`). Pickled
checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused, never unpickled.

What maps where:
  llama  (LlamaForCausalLM) -> the text-only `DecoderLM(num_extra_tokens=2)` tree, scanned layers
         (`segment_0/block_0/...` [L, ...]); the <image>/<EOC> rows (`extra_embed`, `extra_head`) are
         freshly initialised. Load it with `config.init.lm_checkpoint` (`train.load_text_lm`).
  clip   (CLIPVisionModel, or CLIPModel's `vision_model.*` tensors) -> the `VisionTransformer` tree,
         scanned.
  siglip (SiglipVisionModel, or SiglipModel's `vision_model.*` tensors) -> the same, SigLIP variant.
         Load either with `config.init.vision_checkpoint`.
  idefics (IdeficsForVisionText2Text, IDEFICS v1) -> the whole `Flamingo` tree {vision, resampler,
         lm}, scanned; its config fields from `idefics_config` (see the decisions in
         docs/architecture.md). Load it with `config.init.flamingo_checkpoint`.

`*_config(hf_config)` turn a checkpoint's `config.json` into our config fields, so shapes are never
transcribed by hand. The import checks that every expected tensor is found, every tensor found is used
(except the documented `IGNORED` ones) and every shape matches; a mismatch is a ValueError naming the
tensor and the config field to change.

Memory: tensors are read one at a time from their shard (plain file reads, no memory map) and written
into preallocated output arrays. `import_*` convert the whole tree (the output plus the largest
tensor); the CLI converts and writes `WRITE_BATCH_BYTES` at a time (`ImportPlan.batches`,
`checkpointing.save_params_in_batches`), so its peak is a few times the largest parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from flamingo_jax.checkpointing import save_params_in_batches
from flamingo_jax import params as P
from flamingo_jax.config import (DTYPES, ROPE_SCALINGS, ExecutionConfig, FlamingoConfig, LMConfig,
                                 ResamplerConfig, RopeScalingConfig, VisionConfig, XAttnConfig,
                                 validate)
from flamingo_jax.lm import DecoderLM
from flamingo_jax.model import abstract_params
from flamingo_jax.vision import VisionTransformer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
NUM_EXTRA_TOKENS = FlamingoConfig().num_new_tokens  # <image>, <EOC>.

# Checkpoint tensors an import deliberately leaves out (regular expressions on the full name).
IGNORED = {
    # Rotary frequencies are recomputed from rope_theta (older checkpoints store them).
    "llama": (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    # The text tower and the contrastive projections of a CLIPModel; CLIP's post_layernorm only
    # normalises the pooled class token, which Flamingo does not use (features = last_hidden_state).
    "clip": (r"text_model\..*", r"visual_projection\..*", r"text_projection\..*", r"logit_scale",
             r"(vision_model\.)?post_layernorm\..*", r"(vision_model\.)?embeddings\.position_ids"),
    # The text tower of a SiglipModel and the attention-pooling head (Flamingo uses all patches).
    "siglip": (r"text_model\..*", r"logit_scale", r"logit_bias", r"(vision_model\.)?head\..*",
               r"(vision_model\.)?embeddings\.position_ids"),
    # As CLIP: the pooled class token's norm; rotary frequencies are recomputed.
    "idefics": (r"model\.vision_model\.post_layernorm\..*",
                r"model\.vision_model\.embeddings\.position_ids",
                r"model\.(layers|gated_cross_attn_layers)\.\d+\.(self|cross)_attn\.rotary_emb\..*"),
}

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------------------- reading checkpoints


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lives: its shard, dtype, shape and byte offset from the start of the file."""

  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int


def _read_header(path: str) -> dict[str, TensorInfo]:
  """A safetensors file is an 8-byte little-endian header length, a JSON header, then the data."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which the importer does "
                       f"not read (known: {', '.join(_SAFETENSORS_DTYPES)}).")
    infos[name] = TensorInfo(path, np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]),
                             tuple(entry["shape"]), 8 + size + entry["data_offsets"][0])
  return infos


def checkpoint_tensors(checkpoint_dir: str) -> dict[str, TensorInfo]:
  """name -> TensorInfo for every tensor of a safetensors checkpoint directory (one file, or the
  shards named by `*.safetensors.index.json`); reads only the headers."""
  files = sorted(os.listdir(checkpoint_dir))
  pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
  indexes = [f for f in files if f.endswith(".safetensors.index.json")]
  single = [f for f in files if f.endswith(".safetensors")]
  if not indexes and not single:
    hint = (f"It holds pickled weights ({', '.join(pickled)}), which are never unpickled here. "
            if pickled else "")
    raise ValueError(
        f"No safetensors checkpoint in {checkpoint_dir}. {hint}Convert it with transformers: "
        "`Model.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)`.")
  if len(indexes) > 1:
    raise ValueError(f"{checkpoint_dir} has several index files ({', '.join(indexes)}); keep one.")
  if indexes:
    with open(os.path.join(checkpoint_dir, indexes[0])) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
  elif len(single) == 1:
    shards = single
  else:
    raise ValueError(f"{checkpoint_dir} has several safetensors files ({', '.join(single)}) but no "
                     "`*.safetensors.index.json` saying which tensors they hold.")
  infos = {}
  for shard in shards:
    infos.update(_read_header(os.path.join(checkpoint_dir, shard)))
  return infos


def read_tensor(info: TensorInfo) -> np.ndarray:
  """One tensor from its shard, in the checkpoint's dtype."""
  with open(info.file, "rb") as f:
    f.seek(info.offset)
    count = math.prod(info.shape)
    data = np.fromfile(f, dtype=info.dtype, count=count)
  if data.size != count:
    raise ValueError(f"{info.file} is truncated: it ends inside a tensor of shape {info.shape}.")
  return data.reshape(info.shape)


def _read_json(checkpoint_dir: str, name: str) -> dict[str, Any] | None:
  """`checkpoint_dir/name` parsed, or None when there is no such file."""
  path = os.path.join(checkpoint_dir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_hf_config(checkpoint_dir: str) -> dict[str, Any]:
  hf = _read_json(checkpoint_dir, "config.json")
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
    data = _read_json(checkpoint_dir, name)
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


# ----------------------------------------------------------------------------- configs


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
  validate(config)
  return config


# ----------------------------------------------------------------------------- name and layout maps


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one of our parameters comes from: a checkpoint tensor name (with `{i}` for the layer of a
  scanned stack), how to lay it out, and the config fields that set its shape (for errors).

  layout: "same" (our shape), "vector" (flat [prod(ours)] reshaped, e.g. a bias [H*Dh] -> [H, Dh]),
  "gate" (an IDEFICS alpha: [1] -> scalar, [1, 1, D] -> [D]), "linear" (torch Linear [out, in] ->
  our kernel [*in, *out]; `num_in` input dims), "conv" (patch conv [D, 3, p, p] -> our kernel
  [p*p*3, D]).
  """

  name: str
  layout: str
  fields: str
  num_in: int = 1
  # Layer u of our stack reads checkpoint layer `layer_start + layer_stride * u` (IDEFICS: LM block j
  # of gated unit u is checkpoint layer every * u + j).
  layer_stride: int = 1
  layer_start: int = 0


def hf_shape(source: Source, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The checkpoint shape that lays out to our shape `ours`."""
  if source.layout == "same":
    return ours
  if source.layout == "vector":
    return (math.prod(ours),)
  if source.layout == "gate":
    return (1, 1, *ours) if ours else (1,)
  if source.layout == "linear":
    return (math.prod(ours[source.num_in:]), math.prod(ours[:source.num_in]))
  side = math.isqrt(ours[0] // 3)  # conv
  return (ours[1], 3, side, side)


def lay_out_into(source: Source, tensor: np.ndarray, slot: np.ndarray) -> None:
  """Writes checkpoint `tensor` into our preallocated `slot` (a view of the output array), casting
  to its dtype without an intermediate copy."""
  if source.layout in ("same", "vector", "gate"):
    np.copyto(slot, tensor.reshape(slot.shape), casting="unsafe")
  elif source.layout == "linear":
    flat_in = math.prod(slot.shape[:source.num_in])
    np.copyto(slot.reshape(flat_in, -1), tensor.T, casting="unsafe")
  else:  # conv [D, 3, p, p] -> (p, p, 3, D) -> [p*p*3, D]
    np.copyto(slot.reshape(*tensor.shape[2:], tensor.shape[1], -1), tensor.transpose(2, 3, 1, 0),
              casting="unsafe")


def llama_sources(config: LMConfig) -> dict[tuple[str, ...], Source]:
  """Our text-only DecoderLM path -> checkpoint source (block paths are scanned over `{i}`)."""
  layer = "model.layers.{i}."
  attn = "model.lm.width, model.lm.num_heads"
  kv = "model.lm.width, model.lm.num_kv_heads"
  block = {
      ("attn_norm", "scale"): Source(layer + "input_layernorm.weight", "same", "model.lm.width"),
      ("attn", "query", "kernel"): Source(layer + "self_attn.q_proj.weight", "linear", attn),
      ("attn", "key", "kernel"): Source(layer + "self_attn.k_proj.weight", "linear", kv),
      ("attn", "value", "kernel"): Source(layer + "self_attn.v_proj.weight", "linear", kv),
      ("attn", "out", "kernel"): Source(layer + "self_attn.o_proj.weight", "linear", attn, num_in=2),
      ("mlp_norm", "scale"): Source(layer + "post_attention_layernorm.weight", "same",
                                    "model.lm.width"),
      ("mlp", "gate", "kernel"): Source(layer + "mlp.gate_proj.weight", "linear", "model.lm.mlp_dim"),
      ("mlp", "up", "kernel"): Source(layer + "mlp.up_proj.weight", "linear", "model.lm.mlp_dim"),
      ("mlp", "down", "kernel"): Source(layer + "mlp.down_proj.weight", "linear", "model.lm.mlp_dim"),
  }
  sources = {("segment_0", "block_0", *path): s for path, s in block.items()}
  vocab = "model.lm.vocab_size, model.lm.width"
  sources[("embed", "embedding")] = Source("model.embed_tokens.weight", "same", vocab)
  sources[("final_norm", "scale")] = Source("model.norm.weight", "same", "model.lm.width")
  if not config.tie_embeddings:
    sources[("head", "kernel")] = Source("lm_head.weight", "linear", vocab)
  return sources


def vision_sources(config: VisionConfig, prefix: str) -> dict[tuple[str, ...], Source]:
  """Our VisionTransformer path -> checkpoint source (CLIP and SigLIP share the names). `prefix` is
  "vision_model." in dual-tower checkpoints (and in CLIPVisionModel saved by transformers 4), else "".
  """
  layer = prefix + "encoder.layers.{i}."
  width, mlp = "model.vision.width", "model.vision.mlp_dim"
  attn = "model.vision.width, model.vision.num_heads"
  block = {("attn_norm", "scale"): Source(layer + "layer_norm1.weight", "same", width),
           ("attn_norm", "bias"): Source(layer + "layer_norm1.bias", "same", width),
           ("mlp_norm", "scale"): Source(layer + "layer_norm2.weight", "same", width),
           ("mlp_norm", "bias"): Source(layer + "layer_norm2.bias", "same", width),
           ("mlp", "up", "kernel"): Source(layer + "mlp.fc1.weight", "linear", mlp),
           ("mlp", "up", "bias"): Source(layer + "mlp.fc1.bias", "same", mlp),
           ("mlp", "down", "kernel"): Source(layer + "mlp.fc2.weight", "linear", mlp),
           ("mlp", "down", "bias"): Source(layer + "mlp.fc2.bias", "same", width)}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    block[("attn", ours, "kernel")] = Source(layer + f"self_attn.{theirs}.weight", "linear", attn)
    block[("attn", ours, "bias")] = Source(layer + f"self_attn.{theirs}.bias", "vector", attn)
  block[("attn", "out", "kernel")] = Source(layer + "self_attn.out_proj.weight", "linear", attn,
                                            num_in=2)
  block[("attn", "out", "bias")] = Source(layer + "self_attn.out_proj.bias", "same", width)
  sources = {("blocks", *path): s for path, s in block.items()}
  embed = prefix + "embeddings."
  patch = "model.vision.width, model.vision.patch_size"
  sources[("patch_embed", "kernel")] = Source(embed + "patch_embedding.weight", "conv", patch)
  sources[("pos_embed",)] = Source(embed + "position_embedding.weight", "same",
                                   "model.vision.image_size, model.vision.patch_size")
  if config.patch_bias:
    sources[("patch_embed", "bias")] = Source(embed + "patch_embedding.bias", "same", width)
  if config.class_token:
    sources[("class_token",)] = Source(embed + "class_embedding", "same", width)
  for norm, name in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
    if getattr(config, norm):
      sources[(norm, "scale")] = Source(f"{prefix}{name}.weight", "same", width)
      sources[(norm, "bias")] = Source(f"{prefix}{name}.bias", "same", width)
  return sources


def idefics_sources(config: FlamingoConfig) -> dict[tuple[str, ...], Source]:
  """Our Flamingo path -> IDEFICS checkpoint source (the LM names are LLaMA's under `model.`)."""
  every = config.xattn.every
  sources = {}
  for path, source in llama_sources(config.lm).items():
    if path[0] != "segment_0":
      sources[("lm", *path)] = source
      continue
    for j in range(every):  # LM block j of gated unit u is layer every * u + j.
      sources[("lm", "segment_0", f"block_{j}", *path[2:])] = dataclasses.replace(
          source, layer_stride=every, layer_start=j)
  sources.update({("vision", *path): source for path, source in
                  vision_sources(config.vision, "model.vision_model.").items()})
  if config.num_extra_tokens:
    new = "model.num_extra_tokens, model.lm.width"
    sources[("lm", "extra_embed", "embedding")] = Source(
        "model.embed_tokens.additional_embedding.weight", "same", new)
    if not config.lm.tie_embeddings:
      sources[("lm", "extra_head", "kernel")] = Source("lm_head.additional_fc.weight", "linear", new)

  p = "model.perceiver_resampler."
  layer = p + "blocks.{i}."
  res = "model.resampler.width"
  heads = "model.resampler.num_heads, model.resampler.head_dim"
  block = {("latents_norm",): layer + "0.latents_layer_norm",
           ("media_norm",): layer + "0.context_layer_norm", ("ffw_norm",): layer + "1.ln"}
  resampler = {}
  for path, name in block.items():
    resampler[(*path, "scale")] = Source(name + ".weight", "same", res)
    resampler[(*path, "bias")] = Source(name + ".bias", "same", res)
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    resampler[("attn", ours, "kernel")] = Source(layer + f"0.{theirs}.weight", "linear", heads)
  resampler[("attn", "out", "kernel")] = Source(layer + "0.output_proj.weight", "linear", heads,
                                                num_in=2)
  if config.resampler.qk_norm:
    for ours, theirs in (("query_norm", "q_layer_norm"), ("key_norm", "k_layer_norm")):
      for param, torch_name in (("scale", "weight"), ("bias", "bias")):
        resampler[("attn", ours, param)] = Source(layer + f"0.{theirs}.{torch_name}", "same",
                                                  "model.resampler.head_dim")
  ffw = "model.resampler.width, model.resampler.ffw_mult"
  resampler[("ffw", "up", "kernel")] = Source(layer + "1.fc.weight", "linear", ffw)
  resampler[("ffw", "down", "kernel")] = Source(layer + "1.c_proj.weight", "linear", ffw)
  sources.update({("resampler", "blocks", *path): s for path, s in resampler.items()})
  sources[("resampler", "latents")] = Source(p + "latents", "same",
                                             "model.resampler.num_latents, model.resampler.width")
  for param, torch_name in (("scale", "weight"), ("bias", "bias")):
    sources[("resampler", "final_norm", param)] = Source(p + f"layer_norm.{torch_name}", "same", res)

  x = "model.gated_cross_attn_layers.{i}."
  width = "model.lm.width"
  attn = "model.lm.width, model.xattn.num_heads, model.xattn.head_dim"
  kv = "model.resampler.width, model.xattn.num_heads, model.xattn.head_dim"
  mlp = "model.xattn.ffw_dim"
  xattn = {
      ("attn_norm", "scale"): Source(x + "input_layernorm.weight", "same", width),
      ("attn", "query", "kernel"): Source(x + "cross_attn.q_proj.weight", "linear", attn),
      ("attn", "key", "kernel"): Source(x + "cross_attn.k_proj.weight", "linear", kv),
      ("attn", "value", "kernel"): Source(x + "cross_attn.v_proj.weight", "linear", kv),
      ("attn", "out", "kernel"): Source(x + "cross_attn.o_proj.weight", "linear", attn, num_in=2),
      ("ffw_norm", "scale"): Source(x + "post_attention_layernorm.weight", "same", width),
      ("ffw", "gate", "kernel"): Source(x + "mlp.gate_proj.weight", "linear", mlp),
      ("ffw", "up", "kernel"): Source(x + "mlp.up_proj.weight", "linear", mlp),
      ("ffw", "down", "kernel"): Source(x + "mlp.down_proj.weight", "linear", mlp),
      ("attn_gate",): Source(x + "alpha_cross_attn", "gate", "model.xattn.gate_shape"),
      ("ffw_gate",): Source(x + "alpha_dense", "gate", "model.xattn.gate_shape"),
  }
  if config.xattn.qk_norm:
    xattn[("attn", "query_norm", "scale")] = Source(x + "cross_attn.q_layer_norm.weight", "same",
                                                    "model.xattn.head_dim")
    xattn[("attn", "key_norm", "scale")] = Source(x + "cross_attn.k_layer_norm.weight", "same",
                                                  "model.xattn.head_dim")
  sources.update({("lm", "segment_0", "xattn", *path): s for path, s in xattn.items()})
  return sources


# ----------------------------------------------------------------------------- conversion


@dataclasses.dataclass(frozen=True)
class Expected:
  """One checkpoint tensor the import needs: our path, its layer in a scanned stack (None when not
  stacked) and the checkpoint shape that lays out to our (per-layer) shape."""

  path: tuple[str, ...]
  layer: int | None
  shape: tuple[int, ...]


def expected_tensors(sources: Mapping[tuple[str, ...], Source],
                     abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
                     stacked: Callable[[tuple[str, ...]], int]) -> dict[str, Expected]:
  """Checkpoint name -> Expected. `abstract` holds our shapes; `stacked(path)` is the [L] length of
  a scanned path (0 when not scanned)."""
  out = {}
  for path, source in sources.items():
    length = stacked(path)
    ours = abstract[path].shape[1:] if length else abstract[path].shape
    for i in (range(length) if length else (None,)):
      layer = None if i is None else source.layer_start + source.layer_stride * i
      out[source.name.format(i=layer)] = Expected(path, i, hf_shape(source, ours))
  return out


@dataclasses.dataclass(frozen=True)
class ImportPlan:
  """A checked import: which checkpoint tensor fills which slot of which of our parameters.

  `params()` converts everything at once (nested dict of numpy arrays); `batches(max_bytes)` yields
  disjoint subtrees (nested dicts) of about `max_bytes` (at least one parameter each), made only when
  asked for, so a writer that drops each before asking for the next holds one at a time. `fresh`
  holds parameters with no checkpoint tensor (made on the host).
  """

  config: Any
  tensors: Mapping[str, TensorInfo]
  sources: Mapping[tuple[str, ...], Source]
  wanted: Mapping[str, Expected]
  abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct]
  dtype: np.dtype
  fresh: Mapping[tuple[str, ...], np.ndarray] = dataclasses.field(default_factory=dict)

  def _convert(self, paths) -> dict[tuple[str, ...], np.ndarray]:
    """Our arrays at `paths`, their checkpoint tensors read one at a time in file order."""
    out = {path: np.empty(self.abstract[path].shape, self.dtype) for path in paths}
    names = [name for name, want in self.wanted.items() if want.path in out]
    for name in sorted(names, key=lambda n: (self.tensors[n].file, self.tensors[n].offset)):
      want = self.wanted[name]
      slot = out[want.path] if want.layer is None else out[want.path][want.layer, ...]
      lay_out_into(self.sources[want.path], read_tensor(self.tensors[name]), slot)
    return out

  def batches(self, max_bytes: int):
    first = {}  # Our path -> where its first tensor lies, so batches read the shards in order.
    for name, want in self.wanted.items():
      first[want.path] = min(first.get(want.path, (self.tensors[name].file, math.inf)),
                             (self.tensors[name].file, self.tensors[name].offset))
    batch, size = [], 0
    for path in sorted(self.sources, key=first.__getitem__):
      nbytes = math.prod(self.abstract[path].shape) * self.dtype.itemsize
      if batch and size + nbytes > max_bytes:
        yield traverse_util.unflatten_dict(self._convert(batch))
        batch, size = [], 0
      batch.append(path)
      size += nbytes
    if batch:
      yield traverse_util.unflatten_dict(self._convert(batch))
    if self.fresh:
      yield traverse_util.unflatten_dict(dict(self.fresh))

  def params(self) -> dict[str, Any]:
    return traverse_util.unflatten_dict({**self._convert(self.sources), **self.fresh})


def plan(tensors: Mapping[str, TensorInfo], sources: Mapping[tuple[str, ...], Source],
         abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
         stacked: Callable[[tuple[str, ...]], int], ignored: tuple[str, ...], dtype: str,
         config: Any, fresh: Mapping[tuple[str, ...], np.ndarray] | None = None) -> ImportPlan:
  """Checks a checkpoint against our parameters and returns the ImportPlan; reads only headers.
  Raises ValueError on a missing, unused or misshapen tensor, or a parameter nothing fills."""
  wanted = expected_tensors(sources, abstract, stacked)
  missing = sorted(set(wanted) - set(tensors))
  if missing:
    raise ValueError(f"The checkpoint lacks {len(missing)} expected tensor(s), e.g. {missing[:3]}; "
                     "check that it is the right model family and that config.json matches it.")
  unused = sorted(name for name in set(tensors) - set(wanted)
                  if not any(re.fullmatch(pattern, name) for pattern in ignored))
  if unused:
    raise ValueError(f"The checkpoint has {len(unused)} tensor(s) the import does not use, e.g. "
                     f"{unused[:3]}; this model has parts our config cannot express (or config.json "
                     "has too few layers).")
  for name, want in wanted.items():
    if tensors[name].shape != want.shape:
      raise ValueError(f"Tensor {name} has shape {tensors[name].shape} but {want.shape} is expected; "
                       f"change {sources[want.path].fields} to match the checkpoint.")
  fresh = dict(fresh or {})
  unmapped = sorted("/".join(p) for p in set(abstract) - set(sources) - set(fresh))
  if unmapped:  # Guards the maps against model changes.
    raise ValueError(f"No checkpoint tensor maps to our parameter(s) {', '.join(unmapped)}.")
  return ImportPlan(config, tensors, sources, wanted, abstract, _target_dtype(dtype), fresh)


def _target_dtype(dtype: str) -> np.dtype:
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}.")
  return np.dtype(jnp.dtype(dtype))


def _llama_init(config: LMConfig, dtype: str, seed: int) -> Callable[[], dict[str, Any]]:
  model = DecoderLM(config, ExecutionConfig(param_dtype=dtype), num_extra_tokens=NUM_EXTRA_TOKENS)
  return lambda: nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"])


def _llama_stacked(config: LMConfig) -> Callable[[tuple[str, ...]], int]:
  return lambda path: config.num_layers if path[0] == "segment_0" else 0


def llama_checkpoint_shapes(config: LMConfig) -> dict[str, tuple[int, ...]]:
  """Checkpoint name -> shape of every tensor a LlamaForCausalLM checkpoint of `config` holds (for
  tools and benchmarks that write synthetic checkpoints)."""
  abstract = traverse_util.flatten_dict(jax.eval_shape(_llama_init(config, "float32", 0)))
  expected = expected_tensors(llama_sources(config), abstract, _llama_stacked(config))
  return {name: want.shape for name, want in expected.items()}


def _new_token_rows(abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct], dtype: str,
                    seed: int) -> dict[tuple[str, ...], np.ndarray]:
  """The <image>/<EOC> rows, drawn on the host (no compilation) at the model's initialiser scales:
  `extra_embed` N(0, 0.02), `extra_head` N(0, 1 / D)."""
  rng = np.random.default_rng(seed)
  rows = {}
  for path, std in ((("extra_embed", "embedding"), lambda shape: 0.02),
                    (("extra_head", "kernel"), lambda shape: shape[0] ** -0.5)):
    if path in abstract:
      shape = abstract[path].shape
      rows[path] = (rng.standard_normal(shape, np.float32) * std(shape)).astype(_target_dtype(dtype))
  return rows


def plan_llama(checkpoint_dir: str, config: LMConfig | None = None, dtype: str = "float32",
               seed: int = 0) -> ImportPlan:
  """The ImportPlan of a LlamaForCausalLM checkpoint into the text-only `DecoderLM(num_extra_tokens=2)`
  tree (scanned layers). `config` defaults to `llama_config(config.json)`; the <image>/<EOC> rows are
  drawn from `seed` (train.load_text_lm keeps the frozen rows only; these complete the tree)."""
  tensors = checkpoint_tensors(checkpoint_dir)
  config = config or llama_config(read_hf_config(checkpoint_dir))
  abstract = traverse_util.flatten_dict(jax.eval_shape(_llama_init(config, dtype, seed)))
  return plan(tensors, llama_sources(config), abstract, _llama_stacked(config), IGNORED["llama"],
              dtype, config, _new_token_rows(abstract, dtype, seed))


def import_llama(checkpoint_dir: str, config: LMConfig | None = None, dtype: str = "float32",
                 seed: int = 0) -> tuple[LMConfig, dict[str, Any]]:
  """(LMConfig, params: nested dict of numpy arrays) of `plan_llama`, converted at once."""
  p = plan_llama(checkpoint_dir, config, dtype, seed)
  return p.config, p.params()


def plan_vision(family: str, checkpoint_dir: str, config: VisionConfig | None = None,
                dtype: str = "float32") -> ImportPlan:
  """The ImportPlan of a CLIP or SigLIP (`family`) checkpoint into the `VisionTransformer` tree
  (scanned). `config` defaults to `vision_config(family, config.json, preprocessor_config.json)`."""
  if family not in ("clip", "siglip"):
    raise ValueError(f"family={family!r}: must be clip or siglip.")
  tensors = checkpoint_tensors(checkpoint_dir)
  if config is None:
    config = vision_config(family, read_hf_config(checkpoint_dir),
                           _read_json(checkpoint_dir, "preprocessor_config.json"))
  model = VisionTransformer(config, ExecutionConfig(param_dtype=dtype))
  images = jnp.zeros((1, 1, 1, config.image_size, config.image_size, 3), jnp.uint8)
  abstract = traverse_util.flatten_dict(jax.eval_shape(
      lambda: nn.meta.unbox(model.init(jax.random.key(0), images)["params"])))
  prefix = "vision_model." if any(name.startswith("vision_model.") for name in tensors) else ""
  return plan(tensors, vision_sources(config, prefix), abstract,
              lambda path: config.num_layers if path[0] == "blocks" else 0, IGNORED[family], dtype,
              config)


def import_vision(family: str, checkpoint_dir: str, config: VisionConfig | None = None,
                  dtype: str = "float32") -> tuple[VisionConfig, dict[str, Any]]:
  """(VisionConfig, params: nested dict of numpy arrays) of `plan_vision`, converted at once."""
  p = plan_vision(family, checkpoint_dir, config, dtype)
  return p.config, p.params()


def plan_idefics(checkpoint_dir: str, config: FlamingoConfig | None = None,
                 dtype: str = "float32") -> ImportPlan:
  """The ImportPlan of an IdeficsForVisionText2Text (IDEFICS v1) checkpoint into the whole Flamingo
  tree ({vision, resampler, lm}, scanned layers).

  `config` defaults to `idefics_config(config.json, the tokenizer files' added tokens,
  preprocessor_config.json)`; a checkpoint with new token rows needs tokenizer files naming <image>.
  """
  tensors = checkpoint_tensors(checkpoint_dir)
  if config is None:
    hf = read_hf_config(checkpoint_dir)
    added = checkpoint_token_ids(checkpoint_dir)
    if hf.get("additional_vocab_size", 0) and "<image>" not in added:
      raise ValueError(
          f"{checkpoint_dir} has {hf['additional_vocab_size']} new token rows but no tokenizer file "
          f"({', '.join(TOKENIZER_FILES)}) naming <image>; copy the checkpoint's tokenizer files next "
          "to its weights, or pass a config with model.image_token set.")
    config = idefics_config(hf, added, _read_json(checkpoint_dir, "preprocessor_config.json"))
  abstract = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(
      dataclasses.replace(config, execution=ExecutionConfig(param_dtype=dtype)))))
  lengths = dict(P.stacks(config))
  return plan(tensors, idefics_sources(config), abstract, lambda path: lengths.get(path[:2], 0),
              IGNORED["idefics"], dtype, config)


def import_idefics(checkpoint_dir: str, config: FlamingoConfig | None = None,
                   dtype: str = "float32") -> tuple[FlamingoConfig, dict[str, Any]]:
  """(FlamingoConfig, params: nested dict of numpy arrays) of `plan_idefics`, converted at once."""
  p = plan_idefics(checkpoint_dir, config, dtype)
  return p.config, p.params()


# Bytes of converted parameters the CLI holds at a time (a parameter larger than this is one batch).
WRITE_BATCH_BYTES = 64 * 2**20


def main(argv: list[str] | None = None) -> None:
  import argparse  # noqa: PLC0415 (CLI only)

  parser = argparse.ArgumentParser(
      prog="python -m flamingo_jax.import_weights",
      description="Import a Hugging Face safetensors checkpoint as an orbax parameter tree.")
  parser.add_argument("family", choices=("llama", "clip", "siglip", "idefics"))
  parser.add_argument("--checkpoint", required=True, help="save_pretrained directory")
  parser.add_argument("--out", required=True, help="orbax output directory (overwritten)")
  parser.add_argument("--dtype", default="float32", choices=DTYPES, help="stored parameter dtype")
  args = parser.parse_args(argv)
  planners = {"llama": lambda: plan_llama(args.checkpoint, dtype=args.dtype),
              "idefics": lambda: plan_idefics(args.checkpoint, dtype=args.dtype),
              "clip": lambda: plan_vision("clip", args.checkpoint, dtype=args.dtype),
              "siglip": lambda: plan_vision("siglip", args.checkpoint, dtype=args.dtype)}
  use, section = {"llama": ("config.init.lm_checkpoint", "config.model.lm"),
                  "idefics": ("config.init.flamingo_checkpoint", "config.model")}.get(
                      args.family, ("config.init.vision_checkpoint", "config.model.vision"))
  try:
    import_plan = planners[args.family]()
  except ValueError as e:
    parser.exit(1, f"{parser.prog}: error: {e}\n")
  save_params_in_batches(args.out, import_plan.batches(WRITE_BATCH_BYTES))
  config = import_plan.config
  if args.family == "idefics":  # The stored dtype is not a model setting.
    config = dataclasses.replace(config, execution=ExecutionConfig())
  print(f"Wrote {args.out}. Set {use}={os.path.abspath(args.out)} and {section} to:")
  print(json.dumps(dataclasses.asdict(config), indent=2))


if __name__ == "__main__":
  main()
