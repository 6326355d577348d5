"""The paper's ablation switches (FLAMINGO.md, Ablations): each changes the model or the step as meant.

no tanh gate (model.xattn.gate), all-previous-images attention (model.xattn.media_attention), MLP
instead of the Resampler (model.resampler.kind), unfrozen LM (train.freeze_lm), round-robin over
datasets (data.accumulation); no interleaved data (data.exclude): tests/config/test_sweeps.py (end to end
through a sweep); xattn every n layers: tests/models/test_model_init.py.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data_pipelines import mixture
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo, abstract_params, example_inputs
from flamingo_jax.models.gated_xattn import GatedCrossAttentionDense
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.training import flops
from flamingo_jax.training.setup import build_setup
from flamingo_jax.training.step import TrainState, make_train_step
from flamingo_jax.weights import pretrained
from flamingo_jax.weights.store import save_params
from tests.builders import make_batch, tiny_config
from tests.configs import train_small


def test_gate_none_adds_the_block_outputs_without_tanh():
  config = tiny_config()
  ungated_config = tiny_config(**{"xattn.gate": "none"})
  y = jax.random.normal(jax.random.key(0), (2, 6, config.lm.width))
  visual = jax.random.normal(jax.random.key(1), (2, 2, 3, config.resampler.width))
  phi = jnp.asarray([[0, 1, 1, 2, 2, 2]] * 2, jnp.int32)
  tanh_block = GatedCrossAttentionDense(config.xattn, config.execution)
  ungated = GatedCrossAttentionDense(ungated_config.xattn, ungated_config.execution)
  params = tanh_block.init(jax.random.key(2), y, visual, phi)["params"]
  ungated_params = {k: v for k, v in params.items() if not k.endswith("_gate")}
  assert set(ungated.init(jax.random.key(2), y, visual, phi)["params"]) == set(ungated_params)

  # alpha = 0: the tanh block is the identity; the ungated one is not.
  np.testing.assert_array_equal(tanh_block.apply({"params": params}, y, visual, phi), y)
  out = ungated.apply({"params": ungated_params}, y, visual, phi)
  assert np.abs(np.asarray(out - y)).min(axis=-1).max() > 1e-3  # Every token moved (the FFW).
  # Ungated = the tanh block with both gates at tanh(alpha) = 1 exactly; at tanh(0.5) it differs.
  opened = {**params, "attn_gate": jnp.float32(30.0), "ffw_gate": jnp.float32(30.0)}
  np.testing.assert_allclose(out, tanh_block.apply({"params": opened}, y, visual, phi), atol=1e-6)
  half = {**params, "attn_gate": jnp.float32(0.5), "ffw_gate": jnp.float32(0.5)}
  assert not np.allclose(out, tanh_block.apply({"params": half}, y, visual, phi), atol=1e-3)


def test_all_previous_lets_token_l_see_images_1_to_phi_l():
  phi = jnp.asarray([[0, 1, 1, 2, 3, 4]], jnp.int32)  # 4 > N = 3: no image (past those supplied).
  previous = np.asarray(masking.cross_attention_mask(phi, 3, 2))[0, 0]
  all_previous = np.asarray(masking.cross_attention_mask(phi, 3, 2, all_previous=True))[0, 0]
  image_of_key = np.repeat([1, 2, 3], 2)
  for l, p in enumerate(np.asarray(phi[0])):
    np.testing.assert_array_equal(previous[l], image_of_key == p)
    np.testing.assert_array_equal(all_previous[l], (image_of_key >= 1) & (image_of_key <= p))
  assert not all_previous[0].any() and all_previous[3].sum() == 4 and previous[3].sum() == 2

  # In the gated block: tokens that see image 1 only are unchanged, later tokens see more.
  config = tiny_config()
  wide = tiny_config(**{"xattn.media_attention": "all_previous"})
  y = jax.random.normal(jax.random.key(0), (2, 6, config.lm.width))
  visual = jax.random.normal(jax.random.key(1), (2, 2, 3, config.resampler.width))
  phi = jnp.asarray([[0, 1, 1, 2, 2, 2]] * 2, jnp.int32)
  block = GatedCrossAttentionDense(config.xattn, config.execution)
  params = block.init(jax.random.key(2), y, visual, phi)["params"]
  params = {**params, "attn_gate": jnp.float32(1.0)}
  ours = block.apply({"params": params}, y, visual, phi)
  theirs = GatedCrossAttentionDense(wide.xattn, wide.execution).apply({"params": params}, y, visual,
                                                                      phi)
  np.testing.assert_allclose(ours[:, :3], theirs[:, :3], atol=1e-6)  # phi <= 1: the same.
  assert np.abs(np.asarray(ours[:, 3:] - theirs[:, 3:])).min(axis=-1).max() > 1e-4  # phi = 2.


def test_mlp_projection_replaces_the_resampler_with_one_token_per_patch_and_frame():
  config = tiny_config(**{"resampler.kind": "mlp"})
  params = nn.meta.unbox(abstract_params(config))  # Shapes only: nothing is compiled.
  assert set(params["resampler"]) == {"time_embed", "ffw_norm", "ffw", "final_norm"}
  assert "latents" in abstract_params(tiny_config())["resampler"]
  v = config.vision
  patches = (v.image_size // v.patch_size) ** 2 + int(v.class_token)
  model = Flamingo(config)
  _, images, _ = example_inputs(config, batch=2, num_images=2, num_frames=3)
  visual = jax.eval_shape(functools.partial(model.apply, method=Flamingo.encode_images),
                          {"params": params}, images)
  assert visual.shape == (2, 2, 3 * patches, config.resampler.width)
  tokens, images, phi = example_inputs(config, batch=2, length=16, num_images=2, num_frames=3)
  logits = jax.eval_shape(model.apply, {"params": params}, tokens, images, phi)
  assert logits.shape == (2, 16, config.total_vocab_size)
  kv = {m.name: m for m in flops.inventory(config, 2, 16, 2, 3)}["xattn.0.kv"]
  assert kv.m == 2 * 2 * 3 * patches  # The gated blocks attend to every patch token.


def test_unfrozen_lm_trains_the_pretrained_lm_weights(tmp_path):
  model_config = tiny_config()
  text_lm = DecoderLM(model_config.lm, model_config.execution,
                      num_extra_tokens=model_config.num_extra_tokens)
  lm_weights = nn.meta.unbox(text_lm.init(jax.random.key(7), example_inputs(model_config)[0])["params"])
  save_params(str(tmp_path / "lm"), lm_weights)
  config = train_small.config("one", **{"train.num_steps": 1, "train.freeze_lm": False,
                                         "init.lm_checkpoint": str(tmp_path / "lm")})

  setup = build_setup(config)
  frozen, trainable = pretrained.initial_params(config, setup.parts)
  assert set(frozen) == {"vision"}
  lm = trainable["lm"]
  assert {"embed", "head", "final_norm", "extra_embed"} <= set(lm)
  assert {"block_0", "block_1", "xattn"} <= set(lm["segment_0"])
  np.testing.assert_array_equal(lm["embed"]["embedding"], lm_weights["embed"]["embedding"])
  assert lm["embed"]["embedding"].dtype == jnp.float32
  opt_paths = [jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(setup.abstract_state.opt_state)[0]]
  assert any("block_0" in p for p in opt_paths)  # Adam moments for the LM blocks.

  # One SGD step (lr 1) on a batch with an image: the LM's weights move.
  optimizer = optax.apply_if_finite(optax.sgd(1.0), 10**6)  # The step reads its skip count.
  step = jax.jit(make_train_step(setup.task, optimizer, lambda s: 1.0, {"interleaved": 1.0}))
  state = TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable),
                     jax.random.key_data(jax.random.key(0)))
  tokens, images, phi = make_batch(model_config, batch=8, length=8, num_images=1,
                                   image_positions=(2,))
  batch = {"tokens": tokens, "images": images, "phi": phi, "labels": jnp.roll(tokens, -1, axis=1),
           "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
  state, _ = step(state, frozen, {"interleaved": batch})
  after = jax.device_get(state.trainable["lm"])
  for path in (("embed", "embedding"), ("segment_0", "block_0", "mlp", "up", "kernel")):
    leaf = lambda tree: functools.reduce(lambda t, k: t[k], path, tree)  # noqa: E731
    assert np.abs(np.asarray(leaf(after)) - np.asarray(leaf(lm))).max() > 0, path


def test_round_robin_yields_one_dataset_per_step():
  """The trainer's input with data.accumulation=round_robin: one dataset per step, in turn (the
  step takes whichever datasets a step holds; the ablation sweep trains it end to end)."""
  config = train_small.config("two", **{"data.accumulation": "round_robin"})
  stream = mixture.from_config(config)
  assert [sorted(next(stream)) for _ in range(4)] == [["interleaved"], ["pairs"]] * 2
  config = config.replace({"data.accumulation": "all"})
  assert sorted(next(mixture.from_config(config))) == ["interleaved", "pairs"]


def test_ablation_switches_reject_unknown_values():
  for field, value in (("xattn.gate", "sigmoid"), ("xattn.media_attention", "next"),
                       ("resampler.kind", "transformer")):
    with pytest.raises(ValueError, match=f"model.{field}='{value}'"):
      tiny_config(**{field: value})
  with pytest.raises(ValueError, match="data.exclude='interleaved,m3w': names unknown dataset.*m3w"):
    train_small.config("two", **{"data.exclude": "interleaved,m3w"})
  with pytest.raises(ValueError, match="data.exclude='interleaved,pairs': leaves no dataset"):
    train_small.config("two", **{"data.exclude": "interleaved,pairs"})
