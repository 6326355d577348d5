"""Importing whole IDEFICS (v1) checkpoints: parity with transformers' IdeficsForVisionText2Text
(logits with images in the sequence, greedy generation), the trainer loading the import, the
checkpoint's own token ids, and the errors.

Every checkpoint is a tiny random-weight model saved in the test (nothing is downloaded).
"""

import dataclasses
import inspect
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import IdeficsConfig, IdeficsForVisionText2Text

from data_pipelines import tokenizer as tokenizer_lib
from experiments import idefics as idefics_presets
from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.inference import decoding
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo, abstract_params
from flamingo_jax.training.setup import build_setup
from flamingo_jax.weights import layout, pretrained
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.hf import hf_config
from flamingo_jax.weights.hf import importer as import_weights

VOCAB = 320  # The sentencepiece model's size (256 byte pieces, 4 specials, letters, merges).
FAKE, IMAGE = VOCAB, VOCAB + 1  # IDEFICS' added tokens: <fake_token_around_image>, <image>.
SIZE = 16
TOL = 1e-4

VARIANTS = {
    # qk norms on (RMSNorm in the gated blocks, LayerNorm in the perceiver), scalar gates at 1.
    "qk_norms_scalar_gates": dict(qk_layer_norms=True, alpha_type="float", alpha_initializer="ones",
                                  qk_layer_norms_perceiver=True),
    # qk norms off, one gate per channel drawn from N(0, 1).
    "vector_gates": dict(qk_layer_norms=False, alpha_type="vector", alpha_initializer="normal",
                         qk_layer_norms_perceiver=False),
}


def _sentencepiece(path):
  """A small sentencepiece model (byte fallback) trained on standard-library docstrings, letters and
  spaces only (every other character falls back to bytes), so VOCAB pieces suffice."""
  docs = [inspect.getdoc(obj) or "" for module in (json, os, inspect, dataclasses)
          for obj in vars(module).values() if callable(obj)]
  lines = (re.sub("[^a-z ]", "", line.lower()).strip() for doc in docs for line in doc.splitlines())
  tokenizer_lib.train([line for line in lines if line], path, vocab_size=VOCAB)


def _save_idefics(path, qk_layer_norms, alpha_type, alpha_initializer, qk_layer_norms_perceiver,
                  cross_layer_interval=2, num_hidden_layers=4):
  torch.manual_seed(0)
  config = IdeficsConfig(
      vocab_size=VOCAB, additional_vocab_size=2, hidden_size=32, intermediate_size=48,
      num_hidden_layers=num_hidden_layers, num_attention_heads=4,
      cross_layer_interval=cross_layer_interval, qk_layer_norms=qk_layer_norms,
      alpha_type=alpha_type, alpha_initializer=alpha_initializer, alphas_initializer_range=1.0,
      use_resampler=True, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
      vision_config=dict(embed_dim=24, image_size=SIZE, patch_size=4, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=48),
      perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=2,
                            resampler_n_heads=2, resampler_head_dim=8,
                            qk_layer_norms_perceiver=qk_layer_norms_perceiver))
  model = IdeficsForVisionText2Text(config).eval()
  with torch.no_grad():  # Perceiver and gated-block matrices at std 0.2 (not 0.02): images matter.
    for name, param in model.named_parameters():
      if ("perceiver" in name or "gated_cross_attn" in name) and param.dim() == 2:
        param.normal_(0.0, 0.2)
  model.save_pretrained(path, safe_serialization=True)
  return model


def _add_tokenizer_files(path):
  _sentencepiece(os.path.join(path, "tokenizer.model"))
  with open(os.path.join(path, "added_tokens.json"), "w") as f:
    json.dump({"<fake_token_around_image>": FAKE, "<image>": IMAGE}, f)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """variant -> (hf model, checkpoint dir with tokenizer files), each made on first use."""
  made = {}

  def get(variant):
    if variant not in made:
      path = str(tmp_path_factory.mktemp(variant))
      made[variant] = _save_idefics(path, **VARIANTS[variant]), path
      _add_tokenizer_files(path)
    return made[variant]
  return get


def _inputs(batch=2, length=12, num_images=2):
  """Tokens with IDEFICS' image layout (<fake><image><fake>), uint8 images, the media index phi."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB, (batch, length))
  tokens[:, 0] = 1  # BOS
  tokens[:, 1:4] = (FAKE, IMAGE, FAKE)
  tokens[1, 6:9] = (FAKE, IMAGE, FAKE)  # Row 1 has two images, row 0 one.
  images = rng.integers(0, 256, (batch, num_images, SIZE, SIZE, 3), dtype=np.uint8)
  return tokens, images, masking.media_index(tokens, IMAGE)


def _image_attention_mask(phi, num_images):
  """IDEFICS' image_attention_mask [B, T, N] from our phi: token l attends image phi(l) (1-based)."""
  return (phi[..., None] == np.arange(1, num_images + 1)).astype(np.int64)


def _hf_kwargs(config: FlamingoConfig, images, phi):
  """IDEFICS' inputs for our uint8 images: the same normalised pixels our tower computes."""
  pixels = (images / 255.0 - np.asarray(config.vision.pixel_mean)) / np.asarray(config.vision.pixel_std)
  return dict(pixel_values=torch.tensor(pixels.transpose(0, 1, 4, 2, 3), dtype=torch.float32),
              image_attention_mask=torch.tensor(_image_attention_mask(phi, images.shape[1])))


def _our_logits(config, params, tokens, images, phi):
  return np.asarray(jax.jit(Flamingo(config).apply)(
      {"params": params}, jnp.asarray(tokens), jnp.asarray(images)[:, :, None], jnp.asarray(phi)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_idefics_logits_match_transformers(checkpoints, variant):
  hf_model, path = checkpoints(variant)
  config, params = import_weights.import_idefics(path)
  assert (config.image_token_id, config.eoc_token_id, config.num_extra_tokens) == (IMAGE, 2, 2)
  assert config.xattn.qk_norm == hf_model.config.qk_layer_norms
  tokens, images, phi = _inputs()
  ours = _our_logits(config, params, tokens, images, phi)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(tokens), **_hf_kwargs(config, images, phi)).logits
    other_images = hf_model(input_ids=torch.tensor(tokens),
                            **_hf_kwargs(config, 255 - images, phi)).logits
  assert ours.shape == theirs.shape == (2, 12, VOCAB + 2)
  np.testing.assert_allclose(ours, theirs.numpy(), atol=TOL, rtol=0)
  # The images move the logits after the first <image> by far more than the tolerance.
  assert np.abs(theirs.numpy() - other_images.numpy())[:, 2:].max() > 100 * TOL


def test_idefics_greedy_continuation_matches_generate(checkpoints):
  hf_model, path = checkpoints("qk_norms_scalar_gates")
  config, params = import_weights.import_idefics(path)
  tokens, images, phi = _inputs(length=10)
  new = 6
  with torch.no_grad():
    theirs = hf_model.generate(input_ids=torch.tensor(tokens), **_hf_kwargs(config, images, phi),
                               max_new_tokens=new, min_new_tokens=new, do_sample=False).numpy()
  # Recompute the full forward at every step on a fixed-length buffer (causal: later positions do
  # not change earlier logits), take the argmax of the last real position.
  model = Flamingo(config)
  forward = jax.jit(lambda t: model.apply({"params": params}, t, jnp.asarray(images)[:, :, None],
                                          masking.media_index(t, config.image_token_id)))
  buffer = np.concatenate([tokens, np.zeros((tokens.shape[0], new), tokens.dtype)], axis=1)
  for step in range(tokens.shape[1], buffer.shape[1]):
    buffer[:, step] = np.asarray(forward(jnp.asarray(buffer))[:, step - 1].argmax(-1))
  np.testing.assert_array_equal(buffer, theirs)
  # The cached generator (decoding.py: self-attention cache, image keys/values projected once, qk
  # norms on the cached keys) continues the same way.
  cached, _ = decoding.generate(config, params, tokens, np.ones(tokens.shape, bool),
                                images[:, :, None], decoding.SamplingConfig(max_new_tokens=new),
                                stop_tokens=(config.eoc_token_id,))
  np.testing.assert_array_equal(np.asarray(cached), theirs[:, tokens.shape[1]:])


def test_cli_writes_a_checkpoint_the_trainer_loads(tmp_path, capsys):
  path = str(tmp_path / "hf")
  _save_idefics(path, **VARIANTS["qk_norms_scalar_gates"])
  _add_tokenizer_files(path)
  out = str(tmp_path / "flamingo")
  import_weights.run(["idefics", "--checkpoint", path, "--out", out])
  printed = capsys.readouterr().out
  model_fields = json.loads(printed[printed.index("{"):])
  flat_imported = traverse_util.flatten_dict(import_weights.import_idefics(path)[1])

  def assert_equals_import(params):
    flat = traverse_util.flatten_dict(params)
    assert set(flat) == set(flat_imported)
    for key, value in flat_imported.items():
      np.testing.assert_array_equal(np.asarray(flat[key]), value, err_msg="/".join(key))

  # The preset's training settings, the model the import printed.
  config = Config.from_dict(idefics_presets.get_config("idefics_9b")).replace(
      {"model": model_fields, "init.flamingo_checkpoint": out, "train.frozen_dtype": "float32"})
  setup = build_setup(config, devices=jax.devices()[:1])
  assert_equals_import(ptree.merge(*pretrained.initial_params(config, setup.parts)))
  # A model with execution.scan_layers=False gets the same weights in its unrolled layout.
  unrolled = dataclasses.replace(setup.model_config, execution=dataclasses.replace(
      setup.model_config.execution, scan_layers=False))
  stacks = layout.stacks(unrolled)
  loaded = pretrained.load_scanned(out, nn.meta.unbox(abstract_params(unrolled)), stacks, False)
  assert "blocks_1" in loaded["vision"] and "segment_0_1" in loaded["lm"]
  assert_equals_import(layout.relayout(loaded, stacks, scanned=True))


def test_token_ids_come_from_the_checkpoint_tokenizer(tmp_path):
  _add_tokenizer_files(str(tmp_path))
  tok = tokenizer_lib.Tokenizer.from_checkpoint(str(tmp_path))
  assert (tok.vocab_size, tok.image_id, tok.eoc_id) == (VOCAB, IMAGE, tok.eos_id)
  ids = tok.encode_prompt("<image>a cat<EOC>")
  assert ids[0] == IMAGE and ids[-1] == tok.eos_id
  # tokenizer_config.json agreeing with added_tokens.json is fine; disagreeing names both files.
  with open(tmp_path / "tokenizer_config.json", "w") as f:
    json.dump({"added_tokens_decoder": {str(IMAGE): {"content": "<image>"}}}, f)
  assert tokenizer_lib.Tokenizer.from_checkpoint(str(tmp_path)).image_id == IMAGE
  with open(tmp_path / "tokenizer_config.json", "w") as f:
    json.dump({"added_tokens_decoder": {str(FAKE): {"content": "<image>"}}}, f)
  with pytest.raises(ValueError, match=rf"added_tokens\.json gives <image> id {IMAGE} but "
                                       rf"tokenizer_config\.json gives {FAKE}"):
    tokenizer_lib.Tokenizer.from_checkpoint(str(tmp_path))
  # A checkpoint without added tokens (a plain LLaMA) keeps ours: <image> = V, <EOC> = V + 1.
  plain = tmp_path / "plain"
  plain.mkdir()
  _sentencepiece(str(plain / "tokenizer.model"))
  tok = tokenizer_lib.Tokenizer.from_checkpoint(str(plain))
  assert (tok.image_id, tok.eoc_id) == (VOCAB, VOCAB + 1)


def test_import_errors_name_the_culprit(tmp_path):
  path = str(tmp_path / "no_tokenizer")
  _save_idefics(path, **VARIANTS["vector_gates"])
  with pytest.raises(ValueError, match=r"no tokenizer file.*naming <image>.*model\.image_token"):
    import_weights.import_idefics(path)
  with open(os.path.join(path, "added_tokens.json"), "w") as f:
    json.dump({"<fake_token_around_image>": FAKE, "<image>": IMAGE}, f)
  config = import_weights.plan_idefics(path).config
  wrong = dataclasses.replace(config, xattn=dataclasses.replace(config.xattn, ffw_dim=64))
  with pytest.raises(ValueError, match=r"gated_cross_attn_layers\.0\.mlp\.gate_proj\.weight has "
                                       r"shape \(48, 32\) but \(64, 32\).*model\.xattn\.ffw_dim"):
    import_weights.import_idefics(path, wrong)
  hf = hf_config.read_hf_config(path)
  with pytest.raises(ValueError, match=r"cross_layer_interval=3.*model\.xattn\.every"):
    hf_config.idefics_config({**hf, "cross_layer_interval": 3}, {"<image>": IMAGE})
  with pytest.raises(ValueError, match=r"use_resampler=false"):
    hf_config.idefics_config({**hf, "use_resampler": False}, {"<image>": IMAGE})


@pytest.mark.parametrize("preset", idefics_presets.PRESETS)
def test_presets_build_valid_configs(preset):
  config = FlamingoConfig.from_dict(idefics_presets.get_config(preset).model)
  assert config.xattn.every == 4 and config.resampler.time_embeddings is False
