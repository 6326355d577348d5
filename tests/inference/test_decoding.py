"""Cached decoding (flamingo_jax/inference/decoding.py) against full recomputation, on the tiny model."""

import collections
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipelines import images as image_ops
from data_pipelines.tokenizer import Tokenizer
from data_pipelines.tokenizer import train as train_tokenizer
from experiments import flamingo as flamingo_presets
from flamingo_jax import sharding
from flamingo_jax.config import Config, SamplingConfig, ServeConfig
from flamingo_jax.inference import decoding
from flamingo_jax.inference import engine as engine_lib
from flamingo_jax.inference import generate as generate_cli
from flamingo_jax.models import masking
from flamingo_jax.models.layers import Dense
from flamingo_jax.models.lm import layer_plan
from flamingo_jax.models.vision import VisionTransformer
from flamingo_jax.weights import pretrained
from tests.builders import apply_fn, init_params, open_gates, tiny_config, trained_run

MAX_NEW = 6


def _config(decode_unrolled=True):
  return tiny_config(**{"execution.decode_unrolled": decode_unrolled})


def _params(config):
  return open_gates(init_params(config))


def _prompts(config, lengths=(9, 9), num_images=2, seed=0):
  """Left-padded prompts of the given real lengths, each starting with <image> and with a second
  <image> in the middle: (tokens [B, T], prompt_mask [B, T], images [B, N, 1, H, W, 3])."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  tokens = np.zeros((len(lengths), t), np.int32)
  mask = np.zeros((len(lengths), t), bool)
  for b, n in enumerate(lengths):
    row = rng.integers(0, config.lm.vocab_size, n)
    row[0] = row[n // 2] = config.image_token_id
    tokens[b, t - n:], mask[b, t - n:] = row, True
  size = config.vision.image_size
  images = rng.integers(0, 256, (len(lengths), num_images, 1, size, size, 3), dtype=np.uint8)
  return tokens, mask, images


def _recompute_logits(config, params, buffers, images):
  """Full forward over right-padded buffers [B, L] (unpadded prompts): logits [B, L, V + 2]."""
  buffers = jnp.asarray(buffers)
  phi = masking.media_index(buffers, config.image_token_id)
  return np.asarray(apply_fn(config)({"params": params}, buffers, jnp.asarray(images), phi),
                    np.float64)


def _recompute_greedy(config, params, tokens, images, max_new):
  b, t = tokens.shape
  buffers = np.zeros((b, t + max_new), np.int32)
  buffers[:, :t] = tokens
  for i in range(max_new):
    buffers[:, t + i] = _recompute_logits(config, params, buffers, images)[:, t + i - 1].argmax(-1)
  return buffers[:, t:]


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _recompute_beam(config, params, tokens, images, sampling, stop_tokens):
  """Beam search with a full forward per step: a finished beam keeps its score (continued by its stop
  token), candidates ranked by logprob / length**length_penalty, length counting the stop token."""
  b, t = tokens.shape
  w, m, lp = sampling.num_beams, sampling.max_new_tokens, sampling.length_penalty
  seqs = np.zeros((b, w, m), np.int32)
  scores = np.tile(np.where(np.arange(w) == 0, 0.0, -np.inf), (b, 1))
  done, lengths, stop_token = np.zeros((b, w), bool), np.full((b, w), m), np.zeros((b, w), np.int32)
  for i in range(m):
    if done.all():
      break
    buffers = np.zeros((b * w, t + m), np.int32)
    buffers[:, :t] = np.repeat(tokens, w, axis=0)
    buffers[:, t:] = seqs.reshape(b * w, m)
    logits = _recompute_logits(config, params, buffers, np.repeat(images, w, axis=0))[:, t + i - 1]
    logp = _log_softmax(logits).reshape(b, w, -1)
    vocab = logp.shape[-1]
    keep_stop = np.where(np.arange(vocab) == stop_token[..., None], 0.0, -np.inf)
    candidates = scores[..., None] + np.where(done[..., None], keep_stop, logp)
    length = np.where(done, lengths + 1, i + 1)[..., None]
    ranked = np.argsort(-(candidates / length ** lp).reshape(b, -1), axis=1, kind="stable")[:, :w]
    parent, token = ranked // vocab, ranked % vocab
    scores = np.take_along_axis(candidates.reshape(b, -1), ranked, axis=1)
    seqs, done, lengths, stop_token = (np.take_along_axis(x, parent[..., None] if x.ndim == 3 else
                                                          parent, axis=1)
                                       for x in (seqs, done, lengths, stop_token))
    newly = np.isin(token, stop_tokens) & ~done
    lengths, stop_token = np.where(newly, i, lengths), np.where(newly, token, stop_token)
    seqs[:, :, i] = token
    done |= np.isin(token, stop_tokens)
  best = np.argmax(scores / np.where(done, lengths + 1, m) ** lp, axis=1)
  rows = np.arange(b)
  return seqs[rows, best], lengths[rows, best]


GREEDY = SamplingConfig(max_new_tokens=MAX_NEW)
BEAM = SamplingConfig("beam", max_new_tokens=MAX_NEW, num_beams=3, length_penalty=1.0)


def _greedy(config, params, tokens, mask, images, stop_tokens=None):
  """Cached greedy decoding; one stop token by default (<EOC>), so the tests share compilations."""
  stop_tokens = (config.eoc_token_id,) if stop_tokens is None else stop_tokens
  return [np.asarray(x) for x in decoding.generate(config, params, tokens, mask, images, GREEDY,
                                                   stop_tokens)]


def _beam_stop_token(config, params, tokens, images):
  """A token the beams pick early (the most frequent of a short greedy decode): stopping on it
  exercises finished beams."""
  greedy = _recompute_greedy(config, params, tokens, images, MAX_NEW)[:, :3]
  return int(np.bincount(greedy.ravel()).argmax())


def test_cached_greedy_equals_full_recompute():
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  new, lengths = _greedy(config, params, tokens, mask, images)
  np.testing.assert_array_equal(new, _recompute_greedy(config, params, tokens, images, MAX_NEW))
  np.testing.assert_array_equal(lengths, [MAX_NEW] * 2)
  # The images matter (the gates are open), so the cross-attention path is exercised too.
  buffers = np.concatenate([tokens, new], axis=1)
  moved = np.abs(_recompute_logits(config, params, buffers, images) -
                 _recompute_logits(config, params, buffers, 255 - images)).max()
  assert moved > 1e-3, moved


def test_cached_beam_search_equals_full_recompute():
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  stop = _beam_stop_token(config, params, tokens, images)
  new, lengths = decoding.generate(config, params, tokens, mask, images, BEAM, stop_tokens=(stop,))
  want, want_lengths = _recompute_beam(config, params, tokens, images, BEAM, (stop,))
  assert (want_lengths < MAX_NEW).any()  # Some best beam finished early.
  np.testing.assert_array_equal(lengths, want_lengths)
  filled = np.where(np.arange(MAX_NEW) >= want_lengths[:, None], stop, want)
  np.testing.assert_array_equal(new, filled)


def test_scanned_and_unrolled_decoding_agree():
  """Decoding with the layers scanned (the cache stacked [units, B, ...], reordered by beam parent on
  axis 1) gives the beams of the default, unrolled decoding (execution.decode_unrolled)."""
  config, scanned = _config(), _config(decode_unrolled=False)
  params = _params(config)
  tokens, mask, images = _prompts(config)
  stop = (_beam_stop_token(config, params, tokens, images),)
  want = decoding.generate(config, params, tokens, mask, images, BEAM, stop)
  got = decoding.generate(scanned, params, tokens, mask, images, BEAM, stop)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_left_padded_batch_equals_one_by_one():
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config, lengths=(9, 6), seed=1)
  batched = _greedy(config, params, tokens, mask, images)
  for b, n in enumerate((9, 6)):
    # Each prompt alone, unpadded (two copies: the compiled [2, T] loop is shared).
    alone = _greedy(config, params, np.repeat(tokens[b:b + 1, -n:], 2, 0), np.ones((2, n), bool),
                    np.repeat(images[b:b + 1], 2, 0))
    for got, want in zip(batched, alone):
      np.testing.assert_array_equal(got[b], want[0])


def test_sampling_with_top_k_1_is_greedy_and_stops_at_stop_tokens():
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  greedy, _ = _greedy(config, params, tokens, mask, images)
  stop = int(greedy[0, 2])
  sampled, lengths = decoding.generate(
      config, params, tokens, mask, images,
      SamplingConfig("sample", max_new_tokens=MAX_NEW, temperature=0.7, top_k=1), (stop,),
      rng=jax.random.key(3))
  for b in range(2):
    hits = np.flatnonzero(greedy[b] == stop)
    n = hits[0] if hits.size else MAX_NEW
    assert lengths[b] == n
    np.testing.assert_array_equal(sampled[b, :n], greedy[b, :n])
    np.testing.assert_array_equal(sampled[b, n:], stop)
  assert lengths[0] <= 2


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))

  def kept(**sampling):
    return np.isfinite(decoding.filter_logits(logits, SamplingConfig("sample", **sampling)))
  np.testing.assert_array_equal(kept(top_k=2), [[False, True, False, True]])
  np.testing.assert_array_equal(kept(top_p=0.7), [[False, True, False, True]])  # 0.5 + 0.25 >= 0.7.
  np.testing.assert_array_equal(kept(top_p=0.8), [[False, True, True, True]])
  np.testing.assert_array_equal(kept(top_p=0.01), [[False, True, False, False]])


def test_score_equals_full_forward_and_prefix_reuse_equals_no_reuse():
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  rng = np.random.default_rng(2)
  candidates = rng.integers(0, config.lm.vocab_size, (2, 3, 4)).astype(np.int32)
  candidates[0, 1, 2] = config.image_token_id  # A candidate may hold an <image> (phi moves on).
  candidate_mask = np.arange(4) < np.array([[4, 2, 3], [1, 4, 4]])[..., None]
  scores = np.asarray(decoding.score(config, params, tokens, mask, images, candidates,
                                     candidate_mask))
  # Reference: log-probs from one plain forward of context + candidate (right padded) per candidate.
  t = tokens.shape[1]
  full = np.concatenate([np.repeat(tokens, 3, 0), candidates.reshape(6, 4)], axis=1)
  logp = _log_softmax(_recompute_logits(config, params, full, np.repeat(images, 3, 0)))
  picked = np.take_along_axis(logp[:, t - 1:-1], candidates.reshape(6, 4, 1), axis=2)[..., 0]
  want = np.where(candidate_mask.reshape(6, 4), picked, 0).sum(1).reshape(2, 3)
  np.testing.assert_allclose(scores, want, rtol=1e-5)

  padded_tokens, padded_mask, _ = _prompts(config, lengths=(9, 6), seed=1)
  reuse = decoding.score(config, params, padded_tokens, padded_mask, images, candidates,
                         candidate_mask)
  no_reuse = decoding.score(config, params, padded_tokens, padded_mask, images, candidates,
                            candidate_mask, reuse_prefix=False)
  np.testing.assert_allclose(reuse, no_reuse, rtol=1e-5)


def test_decoding_on_a_2x2x2_mesh_equals_one_device():
  """Training's layout (parameters over fsdp and tensor, rows over data x fsdp, caches over batch
  and heads): greedy, beam and sampled tokens equal the one-device run, scores to float rounding.
  Three rows over four batch devices: padded inside and cut back."""
  run_config = Config.from_dict(flamingo_presets.get_config("tiny"))
  config = run_config.model
  params = _params(config)
  mesh = sharding.make_mesh(2, 2, 2)
  placed = pretrained.place(run_config, params, mesh)
  tokens, mask, images = _prompts(config, lengths=(9, 6, 8), seed=4)
  sample = SamplingConfig("sample", max_new_tokens=MAX_NEW, temperature=0.8)
  for sampling in (GREEDY, BEAM, sample):
    one = decoding.generate(config, params, tokens, mask, images, sampling,
                            (config.eoc_token_id,), rng=jax.random.key(5))
    split = decoding.generate(config, placed, tokens, mask, images, sampling,
                              (config.eoc_token_id,), rng=jax.random.key(5), mesh=mesh)
    for got, want in zip(split, one):
      np.testing.assert_array_equal(got, want)
  candidates = np.random.default_rng(6).integers(0, config.lm.vocab_size, (3, 2, 4), np.int32)
  candidate_mask = np.arange(4) < np.array([[4, 2], [1, 4], [3, 3]])[..., None]
  np.testing.assert_allclose(
      decoding.score(config, placed, tokens, mask, images, candidates, candidate_mask, mesh=mesh),
      decoding.score(config, params, tokens, mask, images, candidates, candidate_mask),
      rtol=1e-5)


def test_bad_inputs_name_the_culprit():
  config = _config()
  tokens, mask, images = _prompts(config)
  with pytest.raises(ValueError, match="sampling.strategy='nucleus'"):
    SamplingConfig("nucleus")
  with pytest.raises(ValueError, match="sampling.top_p=0.0"):
    SamplingConfig("sample", top_p=0.0)
  with pytest.raises(ValueError, match="prompt_mask"):
    decoding.generate(config, {}, tokens, mask[:, 1:], images, GREEDY, ())
  with pytest.raises(ValueError, match="LEFT padded"):
    decoding.generate(config, {}, tokens, mask[:, ::-1] & (np.arange(9) < 5), images, GREEDY, ())
  with pytest.raises(ValueError, match="model.vision.image_size"):
    decoding.generate(config, {}, tokens, mask, images[:, :, :, 1:], GREEDY, ())
  with pytest.raises(ValueError, match="rng"):
    decoding.generate(config, {}, tokens, mask, images, SamplingConfig("sample"), ())


PROMPT = "<image>Output: abc"


def test_generate_cli_rebuilds_a_run_from_its_workdir_alone(tmp_path):
  """A run as the trainer leaves it (its record, a checkpoint), then the CLI given only
  --checkpoint: the model, its seed-built frozen towers, its tokenizer and its trainable tree all
  come from the workdir, and the printed text is the in-process continuation."""
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 8))) for _ in range(400)]
  train_tokenizer((" ".join(rng.choice(words, 12)) for _ in range(2000)), str(tmp_path / "tok.model"))
  tokenizer = Tokenizer(str(tmp_path / "tok.model"))
  config = Config.from_dict(flamingo_presets.get_config("tiny")).replace(
      {"data.tokenizer": str(tmp_path / "tok.model")})
  run = str(tmp_path / "run")
  params = trained_run(run, config)
  Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")

  loaded_config, loaded = pretrained.load_trained(run)
  assert loaded_config == config.with_absolute_paths()
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  text = generate_cli.generate_text(loaded_config.model, loaded, tokenizer, PROMPT,
                                    [str(tmp_path / "a.jpg")], GREEDY)
  tokens = np.asarray([tokenizer.encode_prompt(PROMPT)], np.int32)
  images = image_ops.decode((tmp_path / "a.jpg").read_bytes(), config.model.vision.image_size)
  new, lengths = decoding.generate(config.model, params, tokens,
                                   np.ones_like(tokens, bool), images[None, None, None], GREEDY,
                                   (config.model.eoc_token_id, tokenizer.eos_id))
  assert text == tokenizer.decode(new[0, :int(lengths[0])])

  cli = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.inference.generate", f"--checkpoint={run}",
       f"--image={tmp_path / 'a.jpg'}", f"--prompt={PROMPT}", f"--sampling.max_new_tokens={MAX_NEW}"],
      capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr
  assert cli.stdout == text + "\n"


def test_image_keys_values_computed_once_per_request():
  """Counts, while a request decodes MAX_NEW tokens, the runs of the vision tower and of the gated
  blocks' visual key projections (once per request) and of the LM's key projections (every step)."""
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  calls = collections.Counter()

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module, path = context.module, context.module.scope.path
    if context.method_name != "__call__":
      return out
    if isinstance(module, VisionTransformer):
      name = "vision"
    elif isinstance(module, Dense) and path[0] == "lm" and path[-1] == "key":
      name = "xattn_key" if "xattn" in path else "lm_key"
    else:
      return out
    jax.debug.callback(lambda _: calls.update([name]), out[..., :1])
    return out

  decoding._generate.clear_cache()  # Trace again, under the interceptor (last test: no recompiles).
  with nn.intercept_methods(count):
    jax.block_until_ready(_greedy(config, params, tokens, mask, images))
  jax.effects_barrier()
  decoding._generate.clear_cache()
  num_gated = sum(s.num_units for s in layer_plan(config.lm.num_layers, config.xattn) if s.has_xattn)
  assert calls == {"vision": 1, "xattn_key": num_gated,
                   "lm_key": config.lm.num_layers * (1 + MAX_NEW)}, calls


def _cache_copies(hlo: str, shapes: set[tuple[int, ...]], computation: str | None = None) -> int:
  """The copy instructions in optimised HLO text (in `computation` only, if given) whose result has
  one of `shapes`."""
  if computation is not None:
    start = hlo.index(f"%{computation} ")
    hlo = hlo[start:hlo.index("\n}", start)]
  found = re.findall(r"= f32\[([\d,]+)\]\S* copy\(", hlo)
  return sum(tuple(int(d) for d in dims.split(",")) in shapes for dims in found)


def test_the_loop_and_the_engine_step_write_the_cache_in_place():
  """With decoding.CACHE_COMPILER_OPTIONS, XLA writes the self-attention cache in place: the
  compiled greedy loop's body and the engine's step copy no buffer of a cache leaf's shape (keys
  [B, K, S, Dh], values [B, K, Dh, S]); without the option they copy each layer's keys and values
  at every step."""
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  b, t = tokens.shape
  k, dh = config.lm.num_kv_heads, config.lm.head_dim

  def shapes(rows, slots):
    return {(rows, k, slots, dh), (rows, k, dh, slots)}

  hlo = decoding._generate.lower(config, params, tokens, mask, images, GREEDY,
                                 jnp.asarray([config.eoc_token_id]), jax.random.key(0)
                                 ).compile().as_text()
  body = re.search(r"\bwhile\(.*?body=%?([\w.-]+)", hlo).group(1)
  assert _cache_copies(hlo, shapes(b, t + MAX_NEW), body) == 0

  serve = ServeConfig(slots=2, max_prompt_tokens=16, max_images=2, sampling=GREEDY)
  engine = engine_lib.Engine(config, params, serve, (config.eoc_token_id,))
  step = engine_lib._step.lower(engine.config, serve.sampling, engine.decoding_params,
                                engine._rows, engine._visual, 2).compile().as_text()
  assert _cache_copies(step, shapes(2, serve.cache_length)) == 0
