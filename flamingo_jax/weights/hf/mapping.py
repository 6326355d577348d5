"""Our parameter paths -> checkpoint tensor names and layouts, one table per model family.

Each `*_sources(config)` maps every parameter of our tree (per layer for a scanned stack, `{i}` in the
name) to a `Source`: the checkpoint tensor, how its layout becomes ours, and the config fields that
set its shape (named in errors). `IGNORED` lists the tensors an import deliberately leaves out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from flamingo_jax.config import FlamingoConfig, LMConfig, VisionConfig

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
