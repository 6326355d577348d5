"""Every model knob, documented once, and the checks that reject impossible combinations.

The experiment files in `experiments/` build an `ml_collections.ConfigDict` from these dataclasses'
defaults (`as_config_dict`) and override what a preset changes; `FlamingoConfig.from_dict` turns the
(possibly command-line overridden) ConfigDict back into frozen dataclasses and validates it, so a bad
value fails here, naming its field, before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "squared_relu", "silu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
GATE_SHAPES = ("scalar", "vector")
ROPE_SCALINGS = ("none", "linear", "llama3")
XATTN_NORMS = ("layer", "rms")
ALPHA_INITS = ("zeros", "ones", "normal")
RESAMPLER_KINDS = ("perceiver", "mlp")
XATTN_GATES = ("tanh", "none")
MEDIA_ATTENTION = ("previous", "all_previous")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Frozen ViT in the CLIP layout; `class_token=False, pre_norm=False, post_norm=True` is SigLIP."""

  image_size: int = 224  # H = W of the input images, pixels.
  patch_size: int = 14  # Square patch side; S = (image_size / patch_size)^2 (+1 with class_token).
  width: int = 1024  # D_vis, the feature width handed to the resampler.
  num_layers: int = 24
  num_heads: int = 16  # Must divide `width`.
  mlp_dim: int = 4096
  activation: str = "quick_gelu"  # One of ACTIVATIONS (CLIP: quick_gelu, SigLIP: gelu_tanh).
  class_token: bool = True  # Prepend a learned class token (CLIP); its feature is kept in S.
  pre_norm: bool = True  # LayerNorm on the embeddings before the first block (CLIP's pre_layrnorm).
  post_norm: bool = False  # LayerNorm on the output features (SigLIP's post_layernorm).
  patch_bias: bool = False  # Bias in the patch embedding (CLIP: none, SigLIP: yes).
  norm_eps: float = 1e-5
  # Inputs are uint8 pixels; the tower normalises (pixels / 255 - mean) / std per channel (CLIP's
  # statistics by default; SigLIP uses 0.5 / 0.5).
  pixel_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
  pixel_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
  """Rescaled rotary frequencies for contexts longer than pretraining (a checkpoint's `rope_scaling`).

  With base frequencies f_i = theta^(-2i / head_dim): "none" keeps them; "linear" divides all by
  `factor`; "llama3" (LLaMA-3.1) divides those with wavelength 2 pi / f_i above
  original_max_positions / low_freq_factor by `factor`, keeps those below
  original_max_positions / high_freq_factor, and interpolates smoothly in between.
  """

  kind: str = "none"  # One of ROPE_SCALINGS.
  factor: float = 1.0  # linear, llama3.
  low_freq_factor: float = 1.0  # llama3 only.
  high_freq_factor: float = 4.0  # llama3 only; must exceed low_freq_factor.
  original_max_positions: int = 8192  # llama3 only: the context length of pretraining.


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Frozen LLaMA-family decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention."""

  vocab_size: int = 32000  # V of the pretrained LM; <image> and <EOC> get ids V and V+1.
  width: int = 2048  # D.
  num_layers: int = 24
  num_heads: int = 16  # Must divide `width`; head_dim = width / num_heads.
  num_kv_heads: int = 16  # Grouped-query attention; must divide num_heads.
  mlp_dim: int = 5632  # SwiGLU hidden width.
  rope_theta: float = 10000.0
  rope_scaling: RopeScalingConfig = RopeScalingConfig()
  norm_eps: float = 1e-5
  tie_embeddings: bool = False  # Output head = embedding table transposed.

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  """Perceiver Resampler: R learned latents attend to concat(frame features, latents)."""

  width: int = 1024  # Latent width; the vision features are projected to it when D_vis differs.
  num_layers: int = 6
  num_heads: int = 16
  head_dim: int = 64
  num_latents: int = 64  # R, visual tokens per image.
  ffw_mult: int = 4  # FFW hidden width = ffw_mult * width.
  ffw_activation: str = "squared_relu"
  num_time_embeddings: int = 8  # Frames per media item seen in training (1 for still images).
  interpolate_time_embeddings: bool = True  # More frames at inference: linear interpolation.
  time_embeddings: bool = True  # Learned per-frame embeddings added to the features (IDEFICS: none).
  qk_norm: bool = False  # LayerNorm (with bias) on the projected queries and keys, per head (IDEFICS).
  # "perceiver": the Perceiver Resampler (paper). "mlp": the paper's ablation: no latents, no
  # attention; every frame's patch features (+ time embedding) go through a projection to `width` and
  # one residual FFW, keeping one visual token per patch and frame (R = F * S; see resampler.py).
  kind: str = "perceiver"  # One of RESAMPLER_KINDS.


@dataclasses.dataclass(frozen=True)
class XAttnConfig:
  """Tanh-gated cross-attention + dense blocks inserted before LM blocks."""

  every: int = 1  # A block before LM layer i whenever i % every == offset.
  offset: int = 0  # 0: from the very first layer (paper); every-1: OpenFlamingo's placement.
  num_heads: int = 8
  head_dim: int = 64
  ffw_mult: int = 4  # FFW hidden width = ffw_mult * LM width.
  ffw_activation: str = "squared_relu"
  gate_shape: str = "scalar"  # "scalar": one alpha per gate (paper); "vector": one per channel.
  qk_norm: bool = False  # RMSNorm on the projected queries and keys (IDEFICS).
  # The text-side norms before the cross-attention and the FFW: "layer" (LayerNorm, paper) or "rms"
  # (RMSNorm, IDEFICS); `norm_eps` is theirs and the qk norms' epsilon.
  norm: str = "layer"
  norm_eps: float = 1e-5
  visual_norm: bool = True  # LayerNorm on the visual keys/values (paper); IDEFICS has none.
  ffw_gated: bool = False  # SwiGLU-style FFW, act(gate(x)) * up(x) (IDEFICS, with ffw_activation=silu).
  ffw_dim: int = 0  # FFW hidden width; 0: ffw_mult * LM width (IDEFICS: the LM's mlp_dim).
  # Initial value of the gates' alpha: "zeros" (paper: the block starts as the identity), "ones", or
  # "normal" with std `alpha_init_std` (IDEFICS' alpha_initializer / alphas_initializer_range).
  alpha_init: str = "zeros"
  alpha_init_std: float = 0.0
  # "tanh": outputs scaled by tanh(alpha), alpha = 0 at init (paper). "none": the ablation: no alpha
  # parameters, the cross-attention and FFW outputs are added ungated (the block is not the identity
  # at init).
  gate: str = "tanh"  # One of XATTN_GATES.
  # "previous": token l attends to image phi(l) only (paper). "all_previous": to every image
  # 1..phi(l) (the paper's ablation; masking.cross_attention_mask).
  media_attention: str = "previous"  # One of MEDIA_ATTENTION.


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How the model runs, independent of its shape."""

  scan_layers: bool = True  # Stack repeated layers under nn.scan (fast compile) or unroll them.
  remat_policy: str = "none"  # One of REMAT_POLICIES; applied to each scanned layer / unit.
  dtype: str = "float32"  # Compute dtype (norms and softmax always run in float32).
  param_dtype: str = "float32"  # Dtype parameters are created in.
  # Decoding (decoding.py) runs the layer stacks unrolled, whatever scan_layers says: a scanned stack
  # slices (copies) every layer's weights at every generated token (~3x slower per token on CPU).
  # False keeps scan_layers when decoding (faster compiles for deep models).
  decode_unrolled: bool = True


@dataclasses.dataclass(frozen=True)
class FlamingoConfig:
  vision: VisionConfig = VisionConfig()
  lm: LMConfig = LMConfig()
  resampler: ResamplerConfig = ResamplerConfig()
  xattn: XAttnConfig = XAttnConfig()
  execution: ExecutionConfig = ExecutionConfig()
  # New token rows after the LM's V (ids V .. V + num_extra_tokens - 1): the trainable `extra_embed`
  # and `extra_head` (IDEFICS: additional_vocab_size, its <fake_token_around_image> and <image>).
  num_extra_tokens: int = 2
  # Ids of <image> and <EOC>; -1: V and V + 1 (our tokenizer's). An imported checkpoint's own ids
  # (IDEFICS-9B: <image> = 32001, and its EOS ends a chunk) come from its tokenizer files.
  image_token: int = -1
  eoc_token: int = -1

  @property
  def image_token_id(self) -> int:
    return self.lm.vocab_size if self.image_token < 0 else self.image_token

  @property
  def eoc_token_id(self) -> int:
    return self.lm.vocab_size + 1 if self.eoc_token < 0 else self.eoc_token

  @property
  def num_new_tokens(self) -> int:
    return self.num_extra_tokens

  @property
  def total_vocab_size(self) -> int:
    return self.lm.vocab_size + self.num_new_tokens

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], prefix: str = "model") -> "FlamingoConfig":
    """Builds and validates the config; unknown or missing fields are errors naming the field."""
    config = _build(cls, d, prefix)
    validate(config, prefix)
    return config

  def as_config_dict(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dataclasses.asdict(self))


def _build(cls, d: Mapping[str, Any], prefix: str):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  d = dict(d)
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"Unknown config field(s) {', '.join(f'{prefix}.{u}' for u in unknown)}; "
                     f"known fields are: {', '.join(sorted(fields))}.")
  kwargs = {}
  for name, f in fields.items():
    if name not in d:
      continue
    value = d[name]
    default = cls.__dataclass_fields__[name].default
    if dataclasses.is_dataclass(default):
      kwargs[name] = _build(type(default), value, f"{prefix}.{name}")
    else:
      kwargs[name] = tuple(value) if isinstance(value, (list, tuple)) else value
  return cls(**kwargs)


def _fail(field: str, value: Any, why: str):
  raise ValueError(f"Invalid config: {field}={value!r}: {why}")


def _positive(prefix: str, obj, *names: str):
  for name in names:
    value = getattr(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      _fail(f"{prefix}.{name}", value, "must be a positive integer.")


def _one_of(prefix: str, obj, name: str, choices):
  value = getattr(obj, name)
  if value not in choices:
    _fail(f"{prefix}.{name}", value, f"must be one of {', '.join(choices)}.")


def validate(config: FlamingoConfig, prefix: str = "model") -> None:
  """Raises ValueError naming the first impossible field; returns None when the config can be built."""
  v, lm, r, x, e = config.vision, config.lm, config.resampler, config.xattn, config.execution
  p = f"{prefix}.vision"
  _positive(p, v, "image_size", "patch_size", "width", "num_layers", "num_heads", "mlp_dim")
  _one_of(p, v, "activation", ACTIVATIONS)
  if v.image_size % v.patch_size:
    _fail(f"{p}.patch_size", v.patch_size, f"must divide {p}.image_size={v.image_size}.")
  if v.width % v.num_heads:
    _fail(f"{p}.num_heads", v.num_heads, f"must divide {p}.width={v.width}.")
  for name in ("pixel_mean", "pixel_std"):
    value = getattr(v, name)
    if len(value) != 3 or (name == "pixel_std" and min(value) <= 0):
      _fail(f"{p}.{name}", value, "must be three per-channel values (std > 0).")

  p = f"{prefix}.lm"
  _positive(p, lm, "vocab_size", "width", "num_layers", "num_heads", "num_kv_heads", "mlp_dim")
  if lm.width % lm.num_heads:
    _fail(f"{p}.num_heads", lm.num_heads, f"must divide {p}.width={lm.width}.")
  if lm.num_heads % lm.num_kv_heads:
    _fail(f"{p}.num_kv_heads", lm.num_kv_heads, f"must divide {p}.num_heads={lm.num_heads}.")
  if lm.head_dim % 2:
    _fail(f"{p}.num_heads", lm.num_heads, f"gives an odd head_dim={lm.head_dim}; rotary embeddings "
          "need an even one.")
  rs = lm.rope_scaling
  _one_of(f"{p}.rope_scaling", rs, "kind", ROPE_SCALINGS)
  if rs.kind != "none" and not rs.factor > 0:
    _fail(f"{p}.rope_scaling.factor", rs.factor, "must be positive.")
  if rs.kind == "llama3":
    _positive(f"{p}.rope_scaling", rs, "original_max_positions")
    if not 0 < rs.low_freq_factor < rs.high_freq_factor:
      _fail(f"{p}.rope_scaling.high_freq_factor", rs.high_freq_factor,
            f"must exceed {p}.rope_scaling.low_freq_factor={rs.low_freq_factor} > 0.")

  p = f"{prefix}.resampler"
  _positive(p, r, "width", "num_layers", "num_heads", "head_dim", "num_latents", "ffw_mult",
            "num_time_embeddings")
  _one_of(p, r, "ffw_activation", ACTIVATIONS)
  _one_of(p, r, "kind", RESAMPLER_KINDS)

  p = f"{prefix}.xattn"
  _positive(p, x, "every", "num_heads", "head_dim", "ffw_mult")
  _one_of(p, x, "ffw_activation", ACTIVATIONS)
  _one_of(p, x, "gate_shape", GATE_SHAPES)
  _one_of(p, x, "gate", XATTN_GATES)
  _one_of(p, x, "media_attention", MEDIA_ATTENTION)
  if not 0 <= x.offset < x.every:
    _fail(f"{p}.offset", x.offset, f"must satisfy 0 <= offset < {p}.every={x.every}.")
  if x.offset >= lm.num_layers:
    _fail(f"{p}.offset", x.offset, f"must be below {prefix}.lm.num_layers={lm.num_layers}.")
  _one_of(p, x, "norm", XATTN_NORMS)
  _one_of(p, x, "alpha_init", ALPHA_INITS)
  if not x.norm_eps > 0:
    _fail(f"{p}.norm_eps", x.norm_eps, "must be positive.")
  if not isinstance(x.ffw_dim, int) or x.ffw_dim < 0:
    _fail(f"{p}.ffw_dim", x.ffw_dim, "must be 0 (ffw_mult * LM width) or a positive width.")
  if not x.alpha_init_std >= 0:
    _fail(f"{p}.alpha_init_std", x.alpha_init_std, "must be >= 0.")

  p = prefix
  if not isinstance(config.num_extra_tokens, int) or config.num_extra_tokens < 0:
    _fail(f"{p}.num_extra_tokens", config.num_extra_tokens, "must be a non-negative integer.")
  total = lm.vocab_size + config.num_extra_tokens
  for name, default in (("image_token", lm.vocab_size), ("eoc_token", lm.vocab_size + 1)):
    value = getattr(config, name)
    token_id = default if value < 0 else value
    if not token_id < total or value < -1:
      _fail(f"{p}.{name}", value, f"id {token_id} is outside the vocabulary of {total} ids "
            f"({prefix}.lm.vocab_size + {prefix}.num_extra_tokens); use -1 or an id below {total}.")
  if config.image_token_id == config.eoc_token_id:
    _fail(f"{p}.eoc_token", config.eoc_token, f"must differ from {p}.image_token's id "
          f"{config.image_token_id}.")

  p = f"{prefix}.execution"
  _one_of(p, e, "remat_policy", REMAT_POLICIES)
  _one_of(p, e, "dtype", DTYPES)
  _one_of(p, e, "param_dtype", DTYPES)


def check_frames(config: ResamplerConfig, num_frames: int, prefix: str = "model.resampler") -> None:
  """Rejects more frames than time embeddings when interpolation is off (called while tracing)."""
  if (config.time_embeddings and num_frames > config.num_time_embeddings
      and not config.interpolate_time_embeddings):
    raise ValueError(
        f"Input has {num_frames} frames per media item but {prefix}.num_time_embeddings="
        f"{config.num_time_embeddings} and {prefix}.interpolate_time_embeddings=False; set "
        f"{prefix}.interpolate_time_embeddings=True or feed at most {config.num_time_embeddings} frames.")
