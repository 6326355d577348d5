"""Importing Hugging Face safetensors checkpoints: numerical parity with transformers, and the checks.

Every checkpoint is a tiny random-weight transformers model saved in the test (nothing is downloaded).
"""

import copy
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import load_file, save_file
from transformers import (
  CLIPConfig,
  CLIPModel,
  CLIPVisionConfig,
  CLIPVisionModel,
  LlamaConfig,
  LlamaForCausalLM,
  SiglipVisionConfig,
  SiglipVisionModel,
)

from benchmarks import import_weights as import_benchmark
from flamingo_jax.config import ExecutionConfig
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo, abstract_params, example_inputs
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.lm import layer_plan as lm_layer_plan
from flamingo_jax.models.vision import VisionTransformer
from flamingo_jax.weights import layout, pretrained
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.hf import hf_config, safetensors
from flamingo_jax.weights.hf import importer as import_weights
from tests.builders import tiny_config

VOCAB = 96
TOL = 1e-4


def _llama(tmp_path_factory, name, **overrides):
  """A random LlamaForCausalLM saved as safetensors; returns (model, directory)."""
  torch.manual_seed(0)
  config = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                rope_theta=5000.0, tie_word_embeddings=False)
  model = LlamaForCausalLM(LlamaConfig(**{**config, **overrides})).eval()
  path = str(tmp_path_factory.mktemp(name))
  model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
  return model, path


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
  return _llama(tmp_path_factory, "llama_gqa")


@pytest.fixture(scope="module")
def llama_tied(tmp_path_factory):
  return _llama(tmp_path_factory, "llama_tied", tie_word_embeddings=True, num_key_value_heads=4)


def _tokens(batch=2, length=12):
  return np.random.default_rng(1).integers(0, VOCAB, (batch, length))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def llama_rope_llama3(tmp_path_factory):
  # Short original context so the scaling changes frequencies that 12 positions can tell apart.
  rope = dict(rope_type="llama3", rope_theta=5000.0, factor=8.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=16)
  return _llama(tmp_path_factory, "llama_rope_llama3", rope_parameters=rope)


@pytest.fixture(scope="module")
def llama_rope_linear(tmp_path_factory):
  rope = dict(rope_type="linear", rope_theta=5000.0, factor=4.0)
  return _llama(tmp_path_factory, "llama_rope_linear", rope_parameters=rope)


@pytest.mark.parametrize("fixture", ["llama_gqa", "llama_tied", "llama_rope_llama3",
                                     "llama_rope_linear"])
def test_llama_logits_match_transformers(fixture, request):
  hf_model, path = request.getfixturevalue(fixture)
  config, params = import_weights.import_llama(path)
  assert config.tie_embeddings == hf_model.config.tie_word_embeddings
  assert config.num_kv_heads == hf_model.config.num_key_value_heads
  assert config.rope_scaling.kind == {"default": "none"}.get(
      hf_model.config.rope_parameters["rope_type"], hf_model.config.rope_parameters["rope_type"])
  tokens = _tokens()
  ours = DecoderLM(config, ExecutionConfig(), num_extra_tokens=2).apply(
      {"params": params}, jnp.asarray(tokens))
  assert ours.shape == (*tokens.shape, VOCAB + 2)
  np.testing.assert_allclose(np.asarray(ours[..., :VOCAB]), _hf_logits(hf_model, tokens), atol=TOL,
                             rtol=0)


def test_sharded_checkpoint_is_read_across_shards(llama_gqa):
  _, path = llama_gqa
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    shards = set(json.load(f)["weight_map"].values())
  assert len(shards) > 2
  tensors = safetensors.checkpoint_tensors(path)
  assert {os.path.basename(info.file) for info in tensors.values()} == shards


def test_bfloat16_checkpoint_converts_to_the_target_dtype(tmp_path, llama_gqa):
  hf_model, _ = llama_gqa
  copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
  _, params = import_weights.import_llama(str(tmp_path), dtype="float32")
  embedding = params["embed"]["embedding"]
  assert embedding.dtype == np.float32
  expected = hf_model.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(embedding, expected)
  _, params = import_weights.import_llama(str(tmp_path), dtype="bfloat16")
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  torch.manual_seed(0)
  model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4)).eval()
  path = str(tmp_path_factory.mktemp("clip"))
  model.save_pretrained(path, safe_serialization=True)
  return model, path


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
  torch.manual_seed(0)
  model = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               image_size=16, patch_size=4)).eval()
  path = str(tmp_path_factory.mktemp("siglip"))
  model.save_pretrained(path, safe_serialization=True)
  return model, path


def _vision_parity(family, hf_model, path):
  config, params = import_weights.import_vision(family, path)
  images = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  ours = VisionTransformer(config, ExecutionConfig()).apply(
      {"params": params}, jnp.asarray(images)[:, None, None])[:, 0, 0]
  pixels = (images / 255.0 - np.asarray(config.pixel_mean)) / np.asarray(config.pixel_std)
  with torch.no_grad():
    theirs = hf_model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32))
  np.testing.assert_allclose(np.asarray(ours), theirs.last_hidden_state.numpy(), atol=TOL, rtol=0)
  return config


def test_clip_features_match_transformers(clip):
  config = _vision_parity("clip", *clip)
  assert (config.class_token, config.pre_norm, config.post_norm) == (True, True, False)


def test_siglip_features_match_transformers(siglip):
  config = _vision_parity("siglip", *siglip)
  assert (config.class_token, config.patch_bias, config.post_norm) == (False, True, True)


def test_clip_model_imports_its_vision_tower_only(tmp_path, clip):
  torch.manual_seed(0)
  dual = CLIPModel(CLIPConfig(
      vision_config=clip[0].config.to_dict(),
      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=1), projection_dim=8)).eval()
  dual.save_pretrained(tmp_path, safe_serialization=True)
  assert any(name.startswith("text_model.") for name in safetensors.checkpoint_tensors(tmp_path))
  _vision_parity("clip", dual.vision_model, str(tmp_path))


def _single_file(tmp_path, source_dir, edit):
  """A copy of a single-file checkpoint whose tensors dict went through `edit`."""
  tensors = load_file(os.path.join(source_dir, "model.safetensors"))
  edit(tensors)
  save_file(tensors, os.path.join(tmp_path, "model.safetensors"))
  with open(os.path.join(source_dir, "config.json")) as f, \
       open(os.path.join(tmp_path, "config.json"), "w") as g:
    g.write(f.read())
  return str(tmp_path)


def test_missing_tensor_is_an_error(tmp_path, clip):
  path = _single_file(tmp_path, clip[1], lambda t: t.pop("encoder.layers.1.mlp.fc2.bias"))
  with pytest.raises(ValueError, match=r"lacks 1 expected tensor.*encoder\.layers\.1\.mlp\.fc2\.bias"):
    import_weights.import_vision("clip", path)


def test_unused_tensor_is_an_error(tmp_path, clip):
  path = _single_file(tmp_path, clip[1], lambda t: t.update(extra_adapter=torch.zeros(3)))
  with pytest.raises(ValueError, match="does not use.*extra_adapter"):
    import_weights.import_vision("clip", path)


def test_ignored_tensors_are_not_an_error(tmp_path, siglip):
  path = _single_file(tmp_path, siglip[1], lambda t: t.update({"head.probe": torch.zeros(1, 1, 32)}))
  import_weights.import_vision("siglip", path)


def test_wrong_shape_names_tensor_and_config_field(llama_gqa):
  _, path = llama_gqa
  config = hf_config.llama_config(hf_config.read_hf_config(path))
  with pytest.raises(ValueError, match=r"gate_proj\.weight has shape \(48, 32\) but \(64, 32\) is "
                                       r"expected; change model\.lm\.mlp_dim"):
    import_weights.import_llama(path, dataclasses.replace(config, mlp_dim=64))


def test_pickled_checkpoint_is_refused(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safe_serialization=True"):
    import_weights.import_llama(str(tmp_path))


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit) as exit_info:
    import_weights.run(["clip", "--checkpoint", str(tmp_path / "empty"), "--out",
                        str(tmp_path / "out")])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert "No safetensors checkpoint" in error and "Traceback" not in error


def test_unsupported_llama_feature_is_an_error(llama_gqa):
  fields = hf_config.read_hf_config(llama_gqa[1])
  with pytest.raises(ValueError, match="attention_bias"):
    hf_config.llama_config({**fields, "attention_bias": True})


def test_imported_lm_loads_into_flamingo_and_matches_without_images(tmp_path, llama_gqa):
  hf_model, path = llama_gqa
  out = str(tmp_path / "lm")
  import_weights.run(["llama", "--checkpoint", path, "--out", out])
  lm = hf_config.llama_config(hf_config.read_hf_config(path))
  lm_fields = traverse_util.flatten_dict(dataclasses.asdict(lm), sep=".")
  config = tiny_config(**{f"lm.{name}": value for name, value in lm_fields.items()},
                       **{"xattn.every": 2, "xattn.offset": 1})
  model = Flamingo(config)
  params = nn.meta.unbox(model.init(jax.random.key(0), *example_inputs(config))["params"])
  frozen, trainable = ptree.split(params)
  frozen = {**frozen, "lm": pretrained.load_text_lm(out, config, frozen["lm"])}
  tokens = _tokens()
  images = jnp.zeros((2, 1, 1, config.vision.image_size, config.vision.image_size, 3), jnp.uint8)
  phi = masking.media_index(jnp.asarray(tokens), config.image_token_id)  # No <image>: all zero.
  logits = model.apply({"params": ptree.merge(frozen, trainable)}, jnp.asarray(tokens), images, phi)
  np.testing.assert_allclose(np.asarray(logits[..., :VOCAB]), _hf_logits(hf_model, tokens),
                             atol=TOL, rtol=0)



def test_import_peak_memory_stays_under_one_and_a_half_times_the_checkpoint():
  # benchmarks/import_weights.py: a 207 MB LLaMA-layout checkpoint imported by the CLI in a fresh
  # process; (peak RSS - RSS with JAX loaded) / checkpoint bytes.
  result = import_benchmark.measure(num_layers=6, dtype="float32")
  assert result["size"] >= 200e6
  assert (result["peak"] - result["baseline"]) / result["size"] < 1.5


def test_scanned_exports_load_into_unrolled_models(tmp_path, clip, llama_gqa, monkeypatch):
  # Imports and the trainer's exports are scanned; a model with execution.scan_layers=False gets
  # them in its unrolled layout (name_0, name_1, ...).
  vision_out, lm_out = str(tmp_path / "vision"), str(tmp_path / "lm")
  import_weights.run(["clip", "--checkpoint", clip[1], "--out", vision_out])
  monkeypatch.setattr(import_weights, "WRITE_BATCH_BYTES", 8 * 1024)  # The LM in many batches.
  import_weights.run(["llama", "--checkpoint", llama_gqa[1], "--out", lm_out])
  vision_config, vision_params = import_weights.import_vision("clip", clip[1])
  lm_config, lm_params = import_weights.import_llama(llama_gqa[1])
  config = dataclasses.replace(tiny_config(**{"xattn.every": 2, "execution.scan_layers": False}),
                               vision=vision_config, lm=lm_config)
  frozen, _ = ptree.split(nn.meta.unbox(abstract_params(config)))  # ShapeDtypeStructs.
  vision = pretrained.load_scanned(vision_out, frozen["vision"], layout.export_stacks("vision", config),
                              scan_layers=False)
  assert set(vision) == set(frozen["vision"]) and "blocks_1" in vision
  np.testing.assert_array_equal(vision["blocks_1"]["mlp"]["up"]["kernel"],
                                vision_params["blocks"]["mlp"]["up"]["kernel"][1])
  lm = pretrained.load_text_lm(lm_out, config, frozen["lm"])
  assert jax.tree.structure(lm) == jax.tree.structure(frozen["lm"])
  layer = 0  # LM layer i sits in unit u of segment k as block j (the gated-block placement).
  for k, segment in enumerate(lm_layer_plan(config.lm.num_layers, config.xattn)):
    for u in range(segment.num_units):
      for j in range(segment.blocks_per_unit):
        np.testing.assert_array_equal(
            lm[f"segment_{k}_{u}"][f"block_{j}"]["mlp"]["gate"]["kernel"],
            lm_params["segment_0"]["block_0"]["mlp"]["gate"]["kernel"][layer])
        layer += 1
  assert layer == config.lm.num_layers
