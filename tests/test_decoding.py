"""Cached decoding (flamingo_jax/decoding.py) against full recomputation, on the tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apply_fn, init_params, tiny_config

from flamingo_jax import decoding, masking
from flamingo_jax.decoding import SamplingConfig
from flamingo_jax.model import Flamingo

MAX_NEW = 6


def _config(scan_layers=True):
  return tiny_config(**{"execution.scan_layers": scan_layers})


def _params(config):
  """Tiny params with every gate at 0.5, so the images change the logits."""
  def open_gate(path, x):
    return jnp.full_like(x, 0.5) if path[-1].key in ("attn_gate", "ffw_gate") else x
  return jax.tree_util.tree_map_with_path(open_gate, init_params(config))


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


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_greedy_equals_full_recompute(scan_layers):
  config = _config(scan_layers)
  params = _params(config)
  tokens, mask, images = _prompts(config)
  new, lengths = decoding.generate(config, params, tokens, mask, images,
                                   SamplingConfig(max_new_tokens=MAX_NEW), stop_tokens=())
  np.testing.assert_array_equal(new, _recompute_greedy(config, params, tokens, images, MAX_NEW))
  np.testing.assert_array_equal(lengths, [MAX_NEW] * 2)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_cached_beam_search_equals_full_recompute(length_penalty):
  config = _config()
  params = _params(config)
  tokens, mask, images = _prompts(config)
  sampling = SamplingConfig("beam", max_new_tokens=MAX_NEW, num_beams=3,
                            length_penalty=length_penalty)
  # A stop token that some beams pick (a frequent greedy token), so finished beams are exercised.
  stop = int(np.bincount(_recompute_greedy(config, params, tokens, images, 3).ravel()).argmax())
  new, lengths = decoding.generate(config, params, tokens, mask, images, sampling, stop_tokens=(stop,))
  want, want_lengths = _recompute_beam(config, params, tokens, images, sampling, (stop,))
  np.testing.assert_array_equal(lengths, want_lengths)
  filled = np.where(np.arange(MAX_NEW) >= want_lengths[:, None], stop, want)
  np.testing.assert_array_equal(new, filled)
