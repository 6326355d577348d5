"""At initialisation Flamingo *is* the frozen LM: same logits, with images present."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.models.lm import DecoderLM, layer_plan
from flamingo_jax.weights import layout
from flamingo_jax.weights import tree as ptree
from tests.builders import apply_fn, init_params, make_batch, tiny_config


def text_lm_logits(config, flamingo_params, tokens):
  """Runs the text-only LM (same frozen weights and new-token rows, no gated blocks) in the
  config's layout (scanned or unrolled)."""
  lm = layout.relayout(flamingo_params, layout.stacks(config), scanned=True)["lm"]
  blocks, xattns = layout.lm_layers(lm, layer_plan(config.lm.num_layers, config.xattn))
  assert len(xattns) == len(range(config.xattn.offset, config.lm.num_layers, config.xattn.every))
  text_params = layout.with_lm_layers(lm, blocks, [], layer_plan(config.lm.num_layers, None))
  text_params = layout.relayout(text_params, [(("segment_0",), config.lm.num_layers)],
                           scanned=config.execution.scan_layers)
  text_lm = DecoderLM(config.lm, config.execution, num_extra_tokens=config.num_extra_tokens)
  return jax.jit(text_lm.apply)({"params": text_params}, tokens)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("placement", [
    {},  # tiny: 4 layers, every 2nd from the first.
    {"lm.num_layers": 5, "xattn.every": 3},  # A shorter last unit (as Flamingo-80B).
    {"lm.num_layers": 5, "xattn.every": 2, "xattn.offset": 1},  # OpenFlamingo-style offset.
])
def test_flamingo_equals_frozen_lm_at_init(scan, placement):
  config = tiny_config(**{"execution.scan_layers": scan, **placement})
  batch = make_batch(config)
  params = init_params(config)
  logits = apply_fn(config)({"params": params}, *batch)
  reference = text_lm_logits(config, params, batch[0])
  assert logits.shape == (2, 16, config.total_vocab_size)
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_less(np.abs(np.asarray(logits - reference)).max(), 1e-6)


def test_opened_gates_change_the_logits(tiny):
  """The equality above is not vacuous: with open gates the images change the output."""
  batch = make_batch(tiny)
  params = init_params(tiny)
  closed = apply_fn(tiny)({"params": params}, *batch)
  opened = jax.tree.map(lambda a: a, params)
  for name in ("attn_gate", "ffw_gate"):
    gates = opened["lm"]["segment_0"]["xattn"][name]
    opened["lm"]["segment_0"]["xattn"][name] = jnp.ones_like(gates)
  out = apply_fn(tiny)({"params": opened}, *batch)
  assert np.abs(np.asarray(out - closed)).max() > 1e-3


def test_relayout_round_trip(tiny):
  batch = make_batch(tiny)
  params = init_params(tiny)
  unrolled = layout.relayout(params, layout.stacks(tiny), scanned=False)
  assert "segment_0_1" in unrolled["lm"] and "segment_0" not in unrolled["lm"]
  assert "blocks_1" in unrolled["vision"] and "blocks_1" in unrolled["resampler"]
  unrolled_config = tiny_config(**{"execution.scan_layers": False})
  np.testing.assert_allclose(  # Scanned and unrolled programs differ in float rounding only.
      apply_fn(unrolled_config)({"params": unrolled}, *batch),
      apply_fn(tiny)({"params": params}, *batch), atol=1e-5)
  back = layout.relayout(unrolled, layout.stacks(tiny), scanned=True)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_at_init_only_gates_and_new_token_rows_get_gradients(tiny):
  """tanh(0) = 0 blocks every path through a closed gate, but not the gate itself."""
  from flamingo_jax.training.losses import next_token_loss
  batch = make_batch(tiny)
  frozen, trainable = ptree.split(init_params(tiny))
  assert set(trainable) == {"resampler", "lm"} and "vision" in frozen
  labels = jnp.roll(batch[0], -1, axis=1)

  def loss(trainable):
    logits = apply_fn(tiny)({"params": ptree.merge(frozen, trainable)}, *batch)
    return next_token_loss(logits, labels, jnp.ones_like(labels))
  grads = jax.grad(loss)(trainable)
  xattn = grads["lm"]["segment_0"]["xattn"]
  assert np.abs(np.asarray(xattn["attn_gate"])).min() > 0
  assert np.abs(np.asarray(xattn["ffw_gate"])).min() > 0
  for leaf in jax.tree.leaves((xattn["attn"], xattn["ffw"], grads["resampler"])):
    np.testing.assert_array_equal(leaf, 0.0)
  assert np.abs(np.asarray(grads["lm"]["extra_embed"]["embedding"])).max() > 0


@pytest.mark.parametrize("policy, scan", [("full", True), ("dots", False),
                                          ("save_dot_except_mlp_in", True)])
def test_remat_policies_keep_loss_and_gradients(policy, scan):
  from flamingo_jax.training.losses import next_token_loss
  base = tiny_config(**{"execution.scan_layers": scan})
  remat = tiny_config(**{"execution.scan_layers": scan, "execution.remat_policy": policy})
  batch = make_batch(base)
  params = jax.tree.map(lambda a: a, init_params(base))
  params["lm"] = jax.tree.map(lambda a: a, params["lm"])
  for name, unit in params["lm"].items():  # Open the gates so that every trainable part matters.
    if "xattn" in unit:
      unit["xattn"]["attn_gate"] = unit["xattn"]["attn_gate"] + 0.5
      unit["xattn"]["ffw_gate"] = unit["xattn"]["ffw_gate"] + 0.5
  frozen, trainable = ptree.split(params)
  labels = jnp.roll(batch[0], -1, axis=1)

  def loss_and_grads(config):
    def loss(trainable):
      logits = apply_fn(config)({"params": ptree.merge(frozen, trainable)}, *batch)
      return next_token_loss(logits, labels, jnp.ones_like(labels))
    return jax.jit(jax.value_and_grad(loss))(trainable)
  (l0, g0), (l1, g1) = loss_and_grads(base), loss_and_grads(remat)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g0, g1)
  assert np.abs(np.asarray(g0["resampler"]["latents"])).max() > 0


@pytest.mark.parametrize("policy, saved", [
    # mlp_down feeds only the residual sum, which its backward does not need: never a residual.
    ("minimal", {"query_proj", "key_proj", "value_proj", "out_proj", "mlp_gate", "mlp_up"}),
    ("save_dot_except_mlp_in", {"query_proj", "key_proj", "value_proj", "out_proj"}),
    ("save_qkv", {"query_proj", "key_proj", "value_proj"}),
    ("full", set())])
def test_remat_by_name_saves_exactly_the_named_projections(policy, saved, capsys):
  import flax.linen as nn
  from jax.ad_checkpoint import print_saved_residuals
  from flamingo_jax.models.layers import REMAT_POLICIES
  from flamingo_jax.models.lm import LMBlock
  config = tiny_config()
  block = nn.remat(LMBlock, policy=REMAT_POLICIES[policy])(config.lm, config.execution)
  x = jnp.ones((1, 4, config.lm.width))
  positions = jnp.arange(4)[None]
  params = block.init(jax.random.key(0), x, positions)
  capsys.readouterr()
  print_saved_residuals(lambda p, x: block.apply(p, x, positions).sum(), params, x)
  lines = capsys.readouterr().out.splitlines()
  names = {line.split("named '")[1].split("'")[0] for line in lines if "named '" in line}
  assert names == saved


def test_logits_at_one_position_equal_that_column_of_the_full_logits(tiny):
  tokens, images, phi = make_batch(tiny)
  params = init_params(tiny)
  full = apply_fn(tiny)({"params": params}, tokens, images, phi)
  lm = DecoderLM(tiny.lm, tiny.execution, xattn=tiny.xattn, num_extra_tokens=tiny.num_extra_tokens)
  visual = Flamingo(tiny).apply({"params": params}, images, method=Flamingo.encode_images)
  at = jnp.array([3, 15])
  one = jax.jit(lm.apply)({"params": params["lm"]}, tokens, visual, phi, logits_at=at)
  assert one.shape == (2, 1, tiny.total_vocab_size)
  np.testing.assert_allclose(one[:, 0], full[jnp.arange(2), at], rtol=1e-5, atol=1e-6)
