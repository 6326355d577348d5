r"""Quickstart: a few hundred optimisation steps of a config on a synthetic captioning task.

  python -m flamingo_jax.quickstart --config experiments/flamingo.py:tiny

Trains the trainable tree (resampler, gated blocks, new-token rows) with AdamW against a randomly
initialised frozen LM and vision tower, then reports, on held-out examples, the loss and accuracy on
colour words (which only the images reveal) and tanh(alpha) of every gated block. This is a smoke run
of the model; the full trainer (mesh, data mixture, checkpoints) is `flamingo_jax.train`'s job.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from data_pipelines.synthetic import captioned_squares
from flamingo_jax import masking
from flamingo_jax import params as P
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.losses import next_token_loss
from flamingo_jax.model import Flamingo

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")


def main(argv):
  del argv
  cfg = _CONFIG.value
  config = FlamingoConfig.from_dict(cfg.model)
  model = Flamingo(config)
  rng = np.random.default_rng(cfg.seed)

  def batch(seed_rng):
    b = captioned_squares(seed_rng, cfg.data.batch_size, cfg.data.seq_len, cfg.data.num_images,
                          config.vision.image_size, config.image_token_id, config.eoc_token_id)
    b = {k: jnp.asarray(v) for k, v in b.items()}
    b["phi"] = masking.media_index(b["tokens"], config.image_token_id)
    return b

  first = batch(rng)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(cfg.seed), first["tokens"],
                                             first["images"], first["phi"])["params"])
  frozen, trainable = P.split(params)
  optimizer = optax.adamw(cfg.optimizer.learning_rate, weight_decay=0.0)
  opt_state = optimizer.init(trainable)
  print(f"frozen parameters {P.count(frozen):,}, trainable {P.count(trainable):,}")

  def metrics(trainable, b):
    logits = model.apply({"params": P.merge(frozen, trainable)}, b["tokens"], b["images"], b["phi"])
    loss = next_token_loss(logits, b["labels"], b["loss_mask"])
    colour_loss = next_token_loss(logits, b["labels"], b["colour_mask"])
    hit = (jnp.argmax(logits, -1) == b["labels"]) * b["colour_mask"]
    return loss, (colour_loss, hit.sum() / b["colour_mask"].sum())

  @jax.jit
  def step(trainable, opt_state, b):
    (loss, aux), grads = jax.value_and_grad(metrics, has_aux=True)(trainable, b)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss, aux

  held_out = batch(np.random.default_rng(cfg.seed + 1))
  evaluate = jax.jit(metrics)
  _, (colour_loss, accuracy) = evaluate(trainable, held_out)
  print(f"before training: held-out colour-word loss {colour_loss:.3f}, accuracy {accuracy:.2f}")
  start = time.perf_counter()
  for i in range(1, cfg.optimizer.num_steps + 1):
    trainable, opt_state, loss, (colour_loss, accuracy) = step(trainable, opt_state, batch(rng))
    if i % max(1, cfg.optimizer.num_steps // 10) == 0 or i == 1:
      print(f"step {i:4d}  loss {loss:.3f}  colour-word loss {colour_loss:.3f}  "
            f"accuracy {accuracy:.2f}  ({time.perf_counter() - start:.1f}s)", flush=True)
  _, (colour_loss, accuracy) = evaluate(trainable, held_out)
  print(f"after {cfg.optimizer.num_steps} steps: held-out colour-word loss {colour_loss:.3f} "
        f"(chance {np.log(4):.3f}), accuracy {accuracy:.2f}")
  for path, gate in sorted(jax.tree_util.tree_flatten_with_path(trainable)[0], key=str):
    name = jax.tree_util.keystr(path)
    if "gate" in name:
      values = ", ".join(f"{g:+.3f}" for g in np.tanh(np.ravel(np.asarray(gate))))
      print(f"tanh(alpha) {name}, one per gated block: [{values}]")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
