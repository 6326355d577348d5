"""The model section (`config.model`): every model knob, documented once, and its checks.

`FlamingoConfig` is hashable: jitted functions take it as a static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flamingo_jax.config.schema import Section, fail, join, non_negative, one_of, positive

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "squared_relu", "silu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "minimal", "save_dot_except_mlp_in",
                  "save_qkv")
ATTENTION_KERNELS = ("auto", "xla", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")
GATE_SHAPES = ("scalar", "vector")
ROPE_SCALINGS = ("none", "linear", "llama3")
XATTN_NORMS = ("layer", "rms")
ALPHA_INITS = ("zeros", "ones", "normal")
RESAMPLER_KINDS = ("perceiver", "mlp")
XATTN_GATES = ("tanh", "none")
MEDIA_ATTENTION = ("previous", "all_previous")


@dataclasses.dataclass(frozen=True)
class VisionConfig(Section):
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

  def check(self, prefix: str) -> None:
    positive(prefix, self, "image_size", "patch_size", "width", "num_layers", "num_heads", "mlp_dim")
    one_of(prefix, self, "activation", ACTIVATIONS)
    if self.image_size % self.patch_size:
      fail(join(prefix, "patch_size"), self.patch_size,
           f"must divide {join(prefix, 'image_size')}={self.image_size}.")
    if self.width % self.num_heads:
      fail(join(prefix, "num_heads"), self.num_heads, f"must divide {join(prefix, 'width')}={self.width}.")
    if min(self.pixel_std) <= 0:
      fail(join(prefix, "pixel_std"), self.pixel_std, "must be three per-channel values > 0.")


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig(Section):
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

  def check(self, prefix: str) -> None:
    one_of(prefix, self, "kind", ROPE_SCALINGS)
    if self.kind != "none" and not self.factor > 0:
      fail(join(prefix, "factor"), self.factor, "must be > 0.")
    if self.kind == "llama3":
      positive(prefix, self, "original_max_positions")
      if not 0 < self.low_freq_factor < self.high_freq_factor:
        fail(join(prefix, "high_freq_factor"), self.high_freq_factor,
             f"must exceed {join(prefix, 'low_freq_factor')}={self.low_freq_factor} > 0.")


@dataclasses.dataclass(frozen=True)
class LMConfig(Section):
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

  def check(self, prefix: str) -> None:
    positive(prefix, self, "vocab_size", "width", "num_layers", "num_heads", "num_kv_heads", "mlp_dim")
    if self.width % self.num_heads:
      fail(join(prefix, "num_heads"), self.num_heads, f"must divide {join(prefix, 'width')}={self.width}.")
    if self.num_heads % self.num_kv_heads:
      fail(join(prefix, "num_kv_heads"), self.num_kv_heads,
           f"must divide {join(prefix, 'num_heads')}={self.num_heads}.")
    if self.head_dim % 2:
      fail(join(prefix, "num_heads"), self.num_heads,
           f"gives an odd head_dim={self.head_dim}; rotary embeddings need an even one.")


@dataclasses.dataclass(frozen=True)
class ResamplerConfig(Section):
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

  def check(self, prefix: str) -> None:
    positive(prefix, self, "width", "num_layers", "num_heads", "head_dim", "num_latents", "ffw_mult",
             "num_time_embeddings")
    one_of(prefix, self, "ffw_activation", ACTIVATIONS)
    one_of(prefix, self, "kind", RESAMPLER_KINDS)


@dataclasses.dataclass(frozen=True)
class XAttnConfig(Section):
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

  def check(self, prefix: str) -> None:
    positive(prefix, self, "every", "num_heads", "head_dim", "ffw_mult", "norm_eps")
    for name, choices in (("ffw_activation", ACTIVATIONS), ("gate_shape", GATE_SHAPES),
                          ("gate", XATTN_GATES), ("media_attention", MEDIA_ATTENTION),
                          ("norm", XATTN_NORMS), ("alpha_init", ALPHA_INITS)):
      one_of(prefix, self, name, choices)
    if not 0 <= self.offset < self.every:
      fail(join(prefix, "offset"), self.offset,
           f"must satisfy 0 <= offset < {join(prefix, 'every')}={self.every}.")
    if self.ffw_dim < 0:
      fail(join(prefix, "ffw_dim"), self.ffw_dim, "must be 0 (ffw_mult * LM width) or a positive width.")
    if self.alpha_init_std < 0:
      fail(join(prefix, "alpha_init_std"), self.alpha_init_std, "must be >= 0.")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig(Section):
  """How the model runs, independent of its shape."""

  scan_layers: bool = True  # Stack repeated layers under nn.scan (fast compile) or unroll them.
  # One of REMAT_POLICIES, applied to each layer / unit (layers.REMAT_POLICIES says what each saves):
  # by kind ("full" saves nothing, "dots" every matmul output, attention scores included) or by name
  # ("minimal": the q/k/v/out and MLP gate/up/down projections; "save_dot_except_mlp_in": those
  # but the MLP's gate/up; "save_qkv": q/k/v only).
  remat_policy: str = "none"
  # Attention kernel (models/attention.py): "auto" picks splash (Pallas) on TPU, cuDNN on GPU and
  # XLA on CPU; or force one ("splash" needs a TPU or Pallas' interpret mode).
  attention: str = "auto"
  dtype: str = "float32"  # Compute dtype (norms and softmax always run in float32).
  param_dtype: str = "float32"  # Dtype parameters are created in.
  # Decoding (decoding.py) runs the layer stacks unrolled, whatever scan_layers says: a scanned stack
  # slices (copies) every layer's weights at every generated token (~3x slower per token on CPU).
  # False keeps scan_layers when decoding (faster compiles for deep models).
  decode_unrolled: bool = True
  # Training losses: 0 builds the whole [B, T, V] logits; n > 0 builds them n positions of each row
  # at a time (losses.fused_token_losses: the hidden states' gradient in the same pass, so the
  # [B, T, V] logits, their softmax and their gradient are never held).
  loss_chunk: int = 0

  def check(self, prefix: str) -> None:
    non_negative(prefix, self, "loss_chunk")
    one_of(prefix, self, "remat_policy", REMAT_POLICIES)
    one_of(prefix, self, "attention", ATTENTION_KERNELS)
    one_of(prefix, self, "dtype", DTYPES)
    one_of(prefix, self, "param_dtype", DTYPES)


@dataclasses.dataclass(frozen=True)
class FlamingoConfig(Section):
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
  def total_vocab_size(self) -> int:
    return self.lm.vocab_size + self.num_extra_tokens

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], prefix: str = "model") -> FlamingoConfig:
    """The model section built from `data` and checked (errors name `model.<field>`)."""
    return super().from_dict(data, prefix)

  def check(self, prefix: str) -> None:
    lm, x = self.lm, self.xattn
    if x.offset >= lm.num_layers:
      fail(join(prefix, "xattn.offset"), x.offset,
           f"must be below {join(prefix, 'lm.num_layers')}={lm.num_layers}.")
    if self.num_extra_tokens < 0:
      fail(join(prefix, "num_extra_tokens"), self.num_extra_tokens, "must be >= 0.")
    total = self.total_vocab_size
    for name, default in (("image_token", lm.vocab_size), ("eoc_token", lm.vocab_size + 1)):
      value = getattr(self, name)
      token_id = default if value < 0 else value
      if not token_id < total or value < -1:
        fail(join(prefix, name), value,
             f"id {token_id} is outside the vocabulary of {total} ids "
             f"({join(prefix, 'lm.vocab_size')} + {join(prefix, 'num_extra_tokens')}); use -1 or an "
             f"id below {total}.")
    if self.image_token_id == self.eoc_token_id:
      fail(join(prefix, "eoc_token"), self.eoc_token,
           f"must differ from {join(prefix, 'image_token')}'s id {self.image_token_id}.")


def check_frames(config: ResamplerConfig, num_frames: int, prefix: str = "model.resampler") -> None:
  """Rejects more frames than time embeddings when interpolation is off (called while tracing)."""
  if (config.time_embeddings and num_frames > config.num_time_embeddings
      and not config.interpolate_time_embeddings):
    raise ValueError(
        f"Input has {num_frames} frames per media item but {prefix}.num_time_embeddings="
        f"{config.num_time_embeddings} and {prefix}.interpolate_time_embeddings=False; set "
        f"{prefix}.interpolate_time_embeddings=True or feed at most {config.num_time_embeddings} frames.")
