"""The three training stages of the paper, as tasks the one trainer runs (`config.task`).

  contrastive  pretrain the vision tower CLIP-style on image-text pairs (paper: NFNet-F6 with a
               contrastive loss); the text tower has the LM's shape. Exports `vision`.
  lm           pretrain the text-only LM (next-token loss on the corpus text). Exports `lm`.
  flamingo     train the resampler, gated blocks and new-token rows against the frozen towers
               (loaded from the two exports through `config.init.*`); with `train.freeze_lm=False`
               (the paper's ablation) the LM's pretrained weights train too.

A task says which model runs, which parameters train, and the loss of a batch as per-item values and
weights: the step averages values over the whole dataset batch by weight (tokens for language
losses, examples for the contrastive loss), so micro-batching does not change the gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax import flops
from flamingo_jax import params as P
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.layers import dense
from flamingo_jax.lm import DecoderLM
from flamingo_jax.losses import token_losses
from flamingo_jax.model import Flamingo, example_inputs
from flamingo_jax.vision import VisionTransformer

TASKS = ("flamingo", "lm", "contrastive")


class ContrastiveTowers(nn.Module):
  """CLIP-style towers: the Flamingo vision tower (same parameter path `vision`, so its weights load
  as Flamingo's frozen tower) and a text tower of the LM's shape, each mean-pooled and projected to
  `embed_dim`, with a learned temperature."""

  config: FlamingoConfig
  embed_dim: int = 128

  @nn.compact
  def __call__(self, tokens: jax.Array, images: jax.Array, text_mask: jax.Array):
    """tokens [B, T], images [B, 1, F, H, W, 3] uint8, text_mask [B, T] -> (image [B, E], text
    [B, E]) unit vectors and the logit scale."""
    c = self.config
    features = VisionTransformer(c.vision, c.execution, name="vision")(images[:, :1])
    image = dense(self.embed_dim, ("embed", None), c.execution, name="image_proj")(
        features.mean(axis=(1, 2, 3)))
    hidden = DecoderLM(c.lm, c.execution, num_extra_tokens=c.num_new_tokens, name="text")(
        tokens, return_hidden=True)
    weights = text_mask.astype(hidden.dtype)[..., None]
    pooled = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    text = dense(self.embed_dim, ("embed", None), c.execution, name="text_proj")(pooled)
    log_scale = self.param("log_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)  # noqa: E731
    return normalise(image.astype(jnp.float32)), normalise(text.astype(jnp.float32)), \
        jnp.exp(jnp.minimum(log_scale, np.log(100.0)))


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  model: nn.Module
  init_inputs: tuple  # Zero inputs of the right shapes for `model.init`.
  trainable_if: Callable  # path -> bool.
  losses: Callable  # (model, params, batch) -> (values, weights), each [B, ...].
  total_weight: Callable  # batch -> the sum of the weights over the whole dataset batch.
  export: str | None  # The subtree written to <workdir>/export/<name> at the end, if any.

  def step_flops(self, config: FlamingoConfig, batches, process_count: int) -> int:
    """Model FLOPs (matmuls) of one update over the global batches."""
    return flops.train_step_flops(self.step_matmuls(config, batches, process_count))

  def step_matmuls(self, config: FlamingoConfig, batches, process_count: int) -> list[flops.MatMul]:
    """The forward matmuls of one update over the global batches (every dataset), each tagged with
    the backward products this task's trainable tree needs."""
    out = []
    for batch in batches.values():
      b, t = batch["tokens"].shape
      n, f = batch["images"].shape[1:3]
      matmuls = flops.inventory(config, b * process_count, t, n, f)
      if self.name == "lm":  # Every LM weight trains: forward, input and weight gradients.
        matmuls = [dataclasses.replace(m, backward=2) for m in matmuls if m.name.startswith("lm.")]
      elif self.name == "flamingo" and self.trainable_if(("lm", "head")):  # Unfrozen LM.
        matmuls = [dataclasses.replace(m, backward=2) if m.name.startswith("lm.") else m
                   for m in matmuls]
      elif self.name == "contrastive":
        matmuls = [dataclasses.replace(m, backward=2) for m in matmuls
                   if m.name.startswith("vision.") or (m.name.startswith("lm.")
                                                       and "head" not in m.name)]
      out += matmuls
    return out


def _loss_tokens(batch) -> jax.Array:
  return jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)


def _flamingo_losses(model, params, batch, z_loss):
  logits = model.apply({"params": params}, batch["tokens"], batch["images"], batch["phi"])
  return token_losses(logits, batch["labels"], z_loss), batch["loss_mask"]


def _lm_losses(model, params, batch, z_loss):
  logits = model.apply({"params": params}, batch["tokens"])
  return token_losses(logits, batch["labels"], z_loss), batch["loss_mask"]


def _contrastive_losses(model, params, batch):
  """Symmetric InfoNCE over the batch: [B] per-example losses, weights 1."""
  image, text, scale = model.apply({"params": params}, batch["tokens"], batch["images"],
                                   batch["loss_mask"])
  logits = scale * image @ text.T
  target = jnp.arange(logits.shape[0])
  per_example = 0.5 * (-jax.nn.log_softmax(logits, axis=1)[target, target]
                       - jax.nn.log_softmax(logits, axis=0)[target, target])
  return per_example, jnp.ones_like(per_example)


def _trains_lm(path) -> bool:
  """The unfrozen-LM rule: the Flamingo rule plus every LM parameter."""
  return P.is_trainable(path) or path[0] == "lm"


def make_task(name: str, config: FlamingoConfig, z_loss: float = 0.0,
              freeze_lm: bool = True) -> Task:
  """`freeze_lm` (flamingo only; `train.freeze_lm`): False puts the LM's weights in the trainable
  tree."""
  if name == "flamingo":
    return Task(name, Flamingo(config), example_inputs(config),
                P.is_trainable if freeze_lm else _trains_lm,
                lambda m, p, b: _flamingo_losses(m, p, b, z_loss), _loss_tokens, None)
  if name == "lm":
    model = DecoderLM(config.lm, config.execution, num_extra_tokens=config.num_new_tokens)
    return Task(name, model, example_inputs(config)[:1], lambda path: True,
                lambda m, p, b: _lm_losses(m, p, b, z_loss), _loss_tokens, "lm")
  if name == "contrastive":
    tokens, images, _ = example_inputs(config)
    return Task(name, ContrastiveTowers(config), (tokens, images, jnp.ones(tokens.shape)),
                lambda path: True, _contrastive_losses,
                lambda batch: jnp.asarray(batch["tokens"].shape[0], jnp.float32), "vision")
  raise ValueError(f"task={name!r}: choose one of {', '.join(TASKS)}.")
