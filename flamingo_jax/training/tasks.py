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
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.contrastive import ContrastiveTowers
from flamingo_jax.models.flamingo import Flamingo, example_inputs, join_rows, split_rows
from flamingo_jax.models.lm import DecoderLM, output_kernels
from flamingo_jax.training import flops
from flamingo_jax.training.losses import fused_token_losses, token_losses
from flamingo_jax.weights import layout
from flamingo_jax.weights import tree as ptree

@dataclasses.dataclass(frozen=True)
class Task:
  """One stage: its model, which parameters train, its loss, its FLOPs and what it exports."""

  model: nn.Module
  init_inputs: tuple  # Zero inputs of the right shapes for `model.init`.
  trainable_if: Callable[[tuple[str, ...]], bool]  # Parameter path -> trained?
  losses: Callable  # (model, params, batch) -> (values, weights), each [B, ...].
  total_weight: Callable  # batch -> the sum of the weights over the whole dataset batch.
  # Flamingo's forward matmuls (flops.inventory) -> those this task's model runs, each tagged with
  # the backward products its trainable tree needs.
  trained_matmuls: Callable[[list[flops.MatMul]], list[flops.MatMul]]
  # trainable tree -> extra per-step metrics (flamingo: tanh(alpha) of every gate).
  metrics: Callable[[ptree.Params], dict[str, jax.Array]] = lambda trainable: {}
  # train.lm_pass=joint: (model, params, [batch per dataset], shards) -> [(values, weights)] per
  # dataset, from one LM pass over all their rows (None: the task has no joint pass).
  joint_losses: Callable | None = None
  export: str | None = None  # The tower written to <workdir>/export/<export> at the end, if any.
  exported: Callable[[ptree.Params], ptree.Params] | None = None  # trainable tree -> that tower.

  def step_flops(self, config: FlamingoConfig, batches, process_count: int,
                 packs: Mapping[str, tuple[int, int]] | None = None) -> int:
    """Model FLOPs (matmuls) of one update over the global batches."""
    return flops.train_step_flops(self.step_matmuls(config, batches, process_count, packs))

  def step_matmuls(self, config: FlamingoConfig, batches, process_count: int,
                   packs: Mapping[str, tuple[int, int]] | None = None) -> list[flops.MatMul]:
    """The forward matmuls of one update over the global batches (every dataset), each tagged with
    the backward products this task's trainable tree needs. A dataset packed k examples of t tokens
    to a row (`packs`: DataConfig.packs) counts as its examples: self-attention within each example
    only, the work the model needs (an unfused kernel also computes the masked-out blocks, and a
    row's padding past k * t is not counted)."""
    out = []
    for name, batch in batches.items():
      b, row = batch["tokens"].shape
      k, t = (packs or {}).get(name, (1, row))
      n, f = batch["images"].shape[1:3]
      out += self.trained_matmuls(
          flops.inventory(config, b * k * process_count, t, n // k, f))
    return out


def _fully_trained(matmuls: list[flops.MatMul], keep: Callable[[str], bool]) -> list[flops.MatMul]:
  """The matmuls whose name passes `keep`, each with its input and weight gradients (backward=2)."""
  return [dataclasses.replace(m, backward=2) for m in matmuls if keep(m.name)]


def _loss_tokens(batch) -> jax.Array:
  return jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)


def _token_losses(run, lm_params, lm_config, chunk: int, labels, z_loss) -> jax.Array:
  """Per-token losses [B, T] of `run(return_hidden)` (the model's apply): from its whole logits, or
  with `chunk` (execution.loss_chunk) from its hidden states and head, chunk by chunk."""
  if not chunk:
    return token_losses(run(False), labels, z_loss)
  return fused_token_losses(run(True), output_kernels(lm_params, lm_config), labels, chunk, z_loss)


def _flamingo_losses(model, params, batch, z_loss):
  def run(return_hidden):
    return model.apply({"params": params}, batch["tokens"], batch["images"], batch["phi"],
                       batch.get("positions"), batch.get("segments"), return_hidden)
  c = model.config
  return (_token_losses(run, params["lm"], c.lm, c.execution.loss_chunk, batch["labels"], z_loss),
          batch["loss_mask"])


def _rows(batch) -> dict:
  """The batch with per-example positions and segment ids [B, T] (one example per row when the
  pipeline did not pack)."""
  if "segments" in batch:
    return batch
  b, t = batch["tokens"].shape
  return {**batch, "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
          "segments": jnp.ones((b, t), jnp.int32)}


def _flamingo_joint_losses(model, params, batches, shards, z_loss):
  """One pass of the LM over every dataset's rows (Flamingo.joint); per-dataset token losses."""
  batches = [_rows(b) for b in batches]
  join = lambda key: join_rows([b[key] for b in batches], shards)  # noqa: E731

  def run(return_hidden):
    return model.apply({"params": params}, join("tokens"), join("phi"), join("positions"),
                       join("segments"), tuple(b["images"] for b in batches), shards,
                       return_hidden, method=Flamingo.joint)
  c = model.config
  losses = _token_losses(run, params["lm"], c.lm, c.execution.loss_chunk, join("labels"), z_loss)
  values = split_rows(losses, [b["tokens"].shape[0] for b in batches], shards)
  return [(v, b["loss_mask"]) for v, b in zip(values, batches)]


def _lm_losses(model, params, batch, z_loss):
  def run(return_hidden):
    return model.apply({"params": params}, batch["tokens"], return_hidden=return_hidden)
  chunk = model.execution.loss_chunk
  return (_token_losses(run, params, model.config, chunk, batch["labels"], z_loss),
          batch["loss_mask"])


def _contrastive_losses(model, params, batch):
  """Symmetric InfoNCE over the batch: [B] per-example losses, weights 1."""
  image, text, scale = model.apply({"params": params}, batch["tokens"], batch["images"],
                                   batch["loss_mask"])
  logits = scale * image @ text.T
  target = jnp.arange(logits.shape[0])
  per_example = 0.5 * (-jax.nn.log_softmax(logits, axis=1)[target, target]
                       - jax.nn.log_softmax(logits, axis=0)[target, target])
  return per_example, jnp.ones_like(per_example)


def gate_values(trainable: ptree.Params, config: FlamingoConfig) -> dict[str, jax.Array]:
  """{"gates/attn": [K], "gates/ffw": [K]}: mean tanh(alpha) of every gated block, in layer order
  (none with `xattn.gate="none"`)."""
  out = {}
  for gate in ("attn", "ffw"):
    values = []
    for (segment, name), stacked in layout.xattn_paths(config):
      block = trainable["lm"][segment][name]
      if f"{gate}_gate" in block:
        alpha = block[f"{gate}_gate"]  # Stacked: [units] or [units, D]; else [] or [D].
        alpha = alpha.reshape(alpha.shape[0], -1) if stacked else alpha.reshape(1, -1)
        values.append(jnp.tanh(alpha.astype(jnp.float32)).mean(axis=1))
    if values:
      out[f"gates/{gate}"] = jnp.concatenate(values)
  return out


def flamingo_task(config: FlamingoConfig, z_loss: float = 0.0, freeze_lm: bool = True) -> Task:
  """Resampler, gated blocks and new-token rows against the frozen towers; `freeze_lm=False` (the
  paper's ablation) trains the LM's weights too."""
  if freeze_lm:
    trained = lambda matmuls: matmuls  # noqa: E731 - flops.inventory tags the frozen-LM case.
  else:
    trained = lambda matmuls: [  # noqa: E731
        dataclasses.replace(m, backward=2) if m.name.startswith("lm.") else m for m in matmuls]
  return Task(Flamingo(config), example_inputs(config), ptree.trainable_rule(freeze_lm),
              lambda m, p, b: _flamingo_losses(m, p, b, z_loss), _loss_tokens, trained,
              metrics=lambda trainable: gate_values(trainable, config),
              joint_losses=lambda m, p, b, shards: _flamingo_joint_losses(m, p, b, shards, z_loss))


def lm_task(config: FlamingoConfig, z_loss: float = 0.0) -> Task:
  """The text-only LM, every weight trained; exports the whole tree as `lm`."""
  model = DecoderLM(config.lm, config.execution, num_extra_tokens=config.num_extra_tokens)
  return Task(model, example_inputs(config)[:1], lambda path: True,
              lambda m, p, b: _lm_losses(m, p, b, z_loss), _loss_tokens,
              lambda matmuls: _fully_trained(matmuls, lambda name: name.startswith("lm.")),
              export="lm", exported=lambda trainable: trainable)


def contrastive_task(config: FlamingoConfig) -> Task:
  """CLIP-style towers, every weight trained; exports the vision tower as `vision`."""
  tokens, images, _ = example_inputs(config)
  text_tower = lambda name: name.startswith("lm.") and "head" not in name  # noqa: E731
  return Task(ContrastiveTowers(config), (tokens, images, jnp.ones(tokens.shape)),
              lambda path: True, _contrastive_losses,
              lambda batch: jnp.asarray(batch["tokens"].shape[0], jnp.float32),
              lambda matmuls: _fully_trained(
                  matmuls, lambda name: name.startswith("vision.") or text_tower(name)),
              export="vision", exported=lambda trainable: trainable["vision"])


def make_task(name: str, config: FlamingoConfig, z_loss: float = 0.0,
              freeze_lm: bool = True) -> Task:
  """The task `config.task` names; `freeze_lm` (`train.freeze_lm`) applies to `flamingo` only."""
  if name == "flamingo":
    return flamingo_task(config, z_loss, freeze_lm)
  if name == "lm":
    return lm_task(config, z_loss)
  if name == "contrastive":
    return contrastive_task(config)
  raise ValueError(f"task={name!r}: choose one of flamingo, lm, contrastive (config.task).")
