"""Cached decoding: generation (greedy, beam search, sampling) and likelihood scoring.

A request (`generate`):
  images --Flamingo.encode_images (vision tower + resampler, once)--> visual [B, N, R, D_res]
  prefill: the left-padded prompt [B, T] through `Flamingo.decode_lm` with empty `cache` and
    `context_cache` collections: each LM block's self-attention keys/values fill slots 0..T-1 of a
    cache of S = T + max_new_tokens slots; each gated block projects the visual tokens to
    keys/values once, into `context_cache`, which the steps only read (a loop invariant).
  loop (one `lax.while_loop`, left when every row has stopped or after max_new_tokens): pick the next
    token from the last logits; feed it as one token at slot T + i, with position = the row's real
    prompt tokens + i and phi = the running count of `<image>` tokens (masking.py's previous-image
    rule); the gated blocks reuse their cached visual keys/values.
Positions count real tokens only and `DecodeSlots.key_mask` hides the left padding, so a padded row
decodes as it would alone. Beam search runs B x num_beams rows: the prefill runs on the B prompts;
its self-attention cache is repeated per beam and reordered by beam parent after each step, while the
gated blocks' visual keys/values stay one row per prompt, shared by its beams. The cache leaves carry
the batch on axis 1 when layers are scanned ([units, B, ...]), on axis 0 otherwise.

Scoring (`score`) runs the shared context once (a prefill with room for the candidates), repeats its
self-attention cache for the C candidates (which share its visual keys/values) and runs all
candidate tokens in one call at slots T..T+K-1.

The loop and the scorer are jitted with the config and sampling settings static; jax caches one
compiled function per (those, input shapes, number of stop tokens). With
`execution.decode_unrolled` (the default) they run the layer stacks unrolled, the params relaid out
inside the jit, because a scanned stack copies every layer's weights at each step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax import sharding
from flamingo_jax.config import FlamingoConfig, SamplingConfig
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.models.layers import DecodeSlots
from flamingo_jax.weights import layout
from flamingo_jax.weights import tree as ptree

# XLA options of the compiled functions that update a decoding cache step by step (the generation
# loop here, the serving engine's step). With region analysis, copy insertion sees that a step
# writes the self-attention cache only after its last read of it, and updates it in place: without
# it XLA copies every layer's keys and values at every step (32 copies per `bench` token here, the
# whole cache twice per engine step; docs/decisions.md, "Cache layout"). A field of XLA's debug
# options, which every backend reads; only the CPU compiler acts on it (libtpu's compile-only
# devices accept it).
CACHE_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def decoding_model(config: FlamingoConfig, params) -> tuple[FlamingoConfig, ptree.Params]:
  """The model decoding runs, and its params: no remat (no backward pass) and, with
  `execution.decode_unrolled`, unrolled layer stacks (params relaid out inside the jit)."""
  unroll = config.execution.scan_layers and config.execution.decode_unrolled
  execution = dataclasses.replace(config.execution, remat_policy="none",
                                  scan_layers=config.execution.scan_layers and not unroll)
  decoding_config = dataclasses.replace(config, execution=execution)
  if unroll:
    params = layout.relayout(params, layout.stacks(config), scanned=False)
  return decoding_config, params


def _batch_axis(config: FlamingoConfig) -> int:
  return 1 if config.execution.scan_layers else 0


def _as_inputs(tokens, prompt_mask, images):
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(prompt_mask, bool), jnp.asarray(images)


def _check_inputs(config: FlamingoConfig, tokens, prompt_mask, images) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}.")
  if prompt_mask.shape != tokens.shape:
    raise ValueError(f"prompt_mask {prompt_mask.shape} must have the shape of tokens {tokens.shape}.")
  if not isinstance(prompt_mask, jax.core.Tracer):
    mask = np.asarray(prompt_mask)
    if not (mask[:, -1].all() and (mask[:, 1:] >= mask[:, :-1]).all()):
      raise ValueError("prompt_mask must be LEFT padded: in every row the real tokens (True) form a "
                       "suffix ending at the last position, at least one per row.")
  size = config.vision.image_size
  if images.ndim != 6 or images.shape[0] != tokens.shape[0] or images.shape[3:] != (size, size, 3):
    raise ValueError(f"images must be [B={tokens.shape[0]}, N, F, {size}, {size}, 3] "
                     f"(model.vision.image_size={size}), got shape {images.shape}.")


def _on_mesh(mesh: jax.sharding.Mesh | None, call, *rows):
  """call(*rows) whose inputs and outputs all lead with the batch. On a mesh (training's, see
  `sharding.py`) the rows are split over its batch devices (data x fsdp; padded to a multiple by
  repeating the last row, cut back after) and the call runs under its activation rules, so the
  self-attention cache and the visual keys/values are split over batch and heads."""
  if mesh is None:
    return call(*rows)
  b = rows[0].shape[0]
  pad = -b % (mesh.shape["data"] * mesh.shape["fsdp"])
  rows = [jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x for x in rows]
  with sharding.active(mesh):
    out = call(*jax.device_put(rows, jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))))
  return jax.tree.map(lambda x: x[:b], out)


def _positions(mask: jax.Array) -> jax.Array:
  """mask [B, T] bool -> [B, T] int32: the index of each real token among its row's real tokens."""
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


def prefill(model: Flamingo, params, visual, tokens, token_mask, cache_length: int,
            every_position: bool = False):
  """Runs tokens [B, T] (left padded; token_mask [B, T]) into a fresh cache of `cache_length` slots.

  Returns (logits [B, 1, V + 2] float32 of the last position (of every position, [B, T, V + 2], with
  `every_position`), cache (the self-attention keys/values), context_cache (the gated blocks'
  visual keys/values), key_mask [B, cache_length], phi [B, T]).
  """
  b, t = tokens.shape
  tokens = jnp.where(token_mask, tokens, 0)
  phi = masking.media_index(tokens, model.config.image_token_id)
  key_mask = jnp.concatenate([token_mask, jnp.ones((b, cache_length - t), bool)], axis=1)
  logits, variables = model.apply(
      {"params": params}, tokens, visual, phi, _positions(token_mask),
      DecodeSlots(jnp.zeros((), jnp.int32), key_mask),
      None if every_position else jnp.full((b,), t - 1, jnp.int32), method=Flamingo.decode_lm,
      mutable=["cache", "context_cache"])
  return (logits.astype(jnp.float32), variables["cache"], variables["context_cache"], key_mask,
          phi)


def decode_step(model: Flamingo, params, cache, context_cache, visual, tokens, positions, phi,
                index, key_mask):
  """tokens, positions, phi [B, L] at cache slots index..index+L-1 -> (logits [B, L, V+2], cache).

  context_cache is read only (a loop invariant: no copy per step); its rows may be fewer than the
  tokens' (beams / candidates share their prompt's row, see `layers.Attention`).
  """
  logits, variables = model.apply(
      {"params": params, "cache": cache, "context_cache": context_cache}, tokens, visual, phi,
      positions, DecodeSlots(index, key_mask), method=Flamingo.decode_lm, mutable=["cache"])
  return logits.astype(jnp.float32), variables["cache"]


def filter_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """[B, V] float32 -> temperature-scaled logits with tokens outside top-k / top-p set to -inf."""
  logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the more likely tokens.
    sorted_logits = jnp.where(before < sampling.top_p, sorted_logits, -jnp.inf)  # Keeps the first.
    logits = jnp.full_like(logits, -jnp.inf).at[
        jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
  return logits


def pick(logits: jax.Array, sampling: SamplingConfig, key: jax.Array) -> jax.Array:
  """[B, V] float32 -> the next tokens [B] int32: the most likely (greedy) or a draw from the
  filtered logits (sample)."""
  if sampling.strategy == "greedy":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, sampling)).astype(jnp.int32)


def _record(token, i, done, lengths, stop_token, phi, stop_tokens, image_id):
  """Books the tokens picked at step i into each row's state -> (done, lengths, stop_token, phi): a
  row's first stop token sets its length (i) and stop token; an `<image>` token moves phi on."""
  is_stop = jnp.isin(token, stop_tokens)
  newly = is_stop & ~done
  return (done | is_stop, jnp.where(newly, i, lengths), jnp.where(newly, token, stop_token),
          phi + (token == image_id))


def _fill_after_stop(new_tokens, lengths, stop_token):
  """Positions from lengths[b] on hold the stop token that ended row b (rows that never stopped have
  lengths = max_new_tokens and are unchanged)."""
  after = jnp.arange(new_tokens.shape[-1]) >= lengths[..., None]
  return jnp.where(after, stop_token[..., None], new_tokens)


def _generate_rows(model, params, visual, tokens, prompt_mask, sampling: SamplingConfig,
                   stop_tokens: jax.Array, rng):
  """Greedy or sampling: one continuation per row."""
  b, t = tokens.shape
  m, image_id = sampling.max_new_tokens, model.config.image_token_id
  logits, cache, context_cache, key_mask, phi = prefill(model, params, visual, tokens, prompt_mask,
                                                        t + m)

  def body(state):
    i, cache, logits, out, done, lengths, stop_token, position, phi, rng = state
    rng, key = jax.random.split(rng)
    token = pick(logits, sampling, key)
    done, lengths, stop_token, phi = _record(token, i, done, lengths, stop_token, phi, stop_tokens,
                                             image_id)
    out = out.at[:, i].set(token)
    step_logits, cache = decode_step(model, params, cache, context_cache, visual, token[:, None],
                                     position[:, None], phi[:, None], t + i, key_mask)
    return (i + 1, cache, step_logits[:, 0], out, done, lengths, stop_token, position + 1, phi, rng)

  def cond(state):
    i, done = state[0], state[4]
    return (i < m) & ~jnp.all(done)

  state = (jnp.zeros((), jnp.int32), cache, logits[:, -1], jnp.zeros((b, m), jnp.int32),
           jnp.zeros((b,), bool), jnp.full((b,), m, jnp.int32), jnp.zeros((b,), jnp.int32),
           prompt_mask.sum(axis=1).astype(jnp.int32), phi[:, -1], rng)
  _, _, _, out, _, lengths, stop_token, _, _, _ = jax.lax.while_loop(cond, body, state)
  return _fill_after_stop(out, lengths, stop_token), lengths


def _beam_search(model, params, visual, tokens, prompt_mask, sampling: SamplingConfig,
                 stop_tokens: jax.Array, batch_axis: int):
  """Beam search over num_beams beams per row; a finished beam keeps its score and competes with the
  open ones; candidates and the final pick are ranked by logprob / length**length_penalty, length
  counting the stop token."""
  b, t = tokens.shape
  w, m, image_id = sampling.num_beams, sampling.max_new_tokens, model.config.image_token_id
  logits, cache, context_cache, key_mask, phi = prefill(model, params, visual, tokens, prompt_mask,
                                                        t + m)
  vocab = logits.shape[-1]
  cache = jax.tree.map(lambda x: jnp.repeat(x, w, axis=batch_axis), cache)
  key_mask = jnp.repeat(key_mask, w, axis=0)
  beam_rows = lambda x: jnp.repeat(x, w, axis=0).reshape(b, w)  # noqa: E731 [B] -> [B, W].

  def normalised(scores, length):
    return scores / length.astype(jnp.float32) ** sampling.length_penalty

  def body(state):
    i, cache, logits, seqs, scores, done, lengths, stop_token, position, phi = state
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, w, vocab)
    keep_stop = jnp.where(jnp.arange(vocab) == stop_token[..., None], 0.0, -jnp.inf)
    candidates = scores[..., None] + jnp.where(done[..., None], keep_stop, logp)  # [B, W, V]
    length = jnp.where(done, lengths + 1, i + 1)[..., None]
    _, flat = jax.lax.top_k(normalised(candidates, length).reshape(b, w * vocab), w)
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)  # [B, W]
    scores = jnp.take_along_axis(candidates.reshape(b, w * vocab), flat, axis=1)
    by_parent = lambda x: jnp.take_along_axis(x, parent, axis=1)  # noqa: E731
    seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1)
    done, lengths, stop_token = by_parent(done), by_parent(lengths), by_parent(stop_token)
    position, phi = by_parent(position), by_parent(phi)
    done, lengths, stop_token, phi = _record(token, i, done, lengths, stop_token, phi, stop_tokens,
                                             image_id)
    seqs = seqs.at[:, :, i].set(token)
    rows = (jnp.arange(b)[:, None] * w + parent).reshape(-1)
    cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis), cache)
    step_logits, cache = decode_step(model, params, cache, context_cache, visual,
                                     token.reshape(-1, 1), position.reshape(-1, 1),
                                     phi.reshape(-1, 1), t + i, key_mask)
    return (i + 1, cache, step_logits[:, 0], seqs, scores, done, lengths, stop_token, position + 1,
            phi)

  def cond(state):
    i, done = state[0], state[5]
    return (i < m) & ~jnp.all(done)

  first_beam_only = jnp.where(jnp.arange(w) == 0, 0.0, -jnp.inf)
  state = (jnp.zeros((), jnp.int32), cache, jnp.repeat(logits[:, -1], w, axis=0),
           jnp.zeros((b, w, m), jnp.int32), jnp.broadcast_to(first_beam_only, (b, w)),
           jnp.zeros((b, w), bool), jnp.full((b, w), m, jnp.int32), jnp.zeros((b, w), jnp.int32),
           beam_rows(prompt_mask.sum(axis=1).astype(jnp.int32)), beam_rows(phi[:, -1]))
  _, _, _, seqs, scores, done, lengths, stop_token, _, _ = jax.lax.while_loop(cond, body, state)
  best = jnp.argmax(normalised(scores, jnp.where(done, lengths + 1, m)), axis=1)[:, None]
  pick = lambda x: jnp.take_along_axis(x, best, axis=1)[:, 0]  # noqa: E731
  seqs = jnp.take_along_axis(seqs, best[..., None], axis=1)[:, 0]
  return _fill_after_stop(seqs, pick(lengths), pick(stop_token)), pick(lengths)


@functools.partial(jax.jit, static_argnames=("config", "sampling"),
                   compiler_options=CACHE_COMPILER_OPTIONS)
def _generate(config: FlamingoConfig, params, tokens, prompt_mask, images,
              sampling: SamplingConfig, stop_tokens: jax.Array, rng):
  config, params = decoding_model(config, params)
  model = Flamingo(config)
  visual = model.apply({"params": params}, images, method=Flamingo.encode_images)
  if sampling.strategy == "beam":
    return _beam_search(model, params, visual, tokens, prompt_mask, sampling, stop_tokens,
                        _batch_axis(config))
  return _generate_rows(model, params, visual, tokens, prompt_mask, sampling, stop_tokens, rng)


def generate(config: FlamingoConfig, params, tokens, prompt_mask, images, sampling: SamplingConfig,
             stop_tokens: Sequence[int], rng: jax.Array | None = None,
             mesh: jax.sharding.Mesh | None = None) -> tuple[jax.Array, jax.Array]:
  """Continues each prompt by up to sampling.max_new_tokens tokens.

  params: the full (merged frozen + trainable) Flamingo param tree; with `mesh`, laid out on it as
  training lays it out (`pretrained.load_trained(workdir, mesh)`, `pretrained.place`), and the rows
  are split over the mesh's batch devices (any B: padded inside). tokens [B, T] int32 prompts, LEFT
  padded; prompt_mask [B, T] bool (True on real tokens; every row needs at least one); images uint8
  [B, N, F, H, W, 3]: row b's k-th <image> token sees images[b, k-1] (unused slots are zeros).
  stop_tokens: e.g. (config.eoc_token_id, tokenizer.eos_id). rng: required for strategy="sample".
  Returns (new_tokens [B, max_new_tokens] int32, lengths [B] int32): lengths[b] = tokens generated
  before the first stop token (the stop token not counted); positions from lengths[b] on hold the
  stop token (or whatever was generated if none).
  """
  tokens, prompt_mask, images = _as_inputs(tokens, prompt_mask, images)
  _check_inputs(config, tokens, prompt_mask, images)
  if sampling.strategy == "sample" and rng is None:
    raise ValueError("generate: strategy='sample' needs an `rng` key.")
  rng = jax.random.key(0) if rng is None else rng
  stops = jnp.asarray([int(s) for s in stop_tokens], jnp.int32).reshape(-1)
  return _on_mesh(mesh, lambda *rows: _generate(config, params, *rows, sampling, stops, rng),
                  tokens, prompt_mask, images)


@functools.partial(jax.jit, static_argnames=("config", "reuse_prefix"))
def _score(config: FlamingoConfig, params, tokens, prompt_mask, images, candidates, candidate_mask,
           reuse_prefix: bool):
  config, params = decoding_model(config, params)
  model = Flamingo(config)
  b, t = tokens.shape
  _, c, k = candidates.shape
  visual = model.apply({"params": params}, images, method=Flamingo.encode_images)
  flat_candidates = candidates.reshape(b * c, k)
  flat_mask = candidate_mask.reshape(b * c, k)
  if reuse_prefix:
    logits, cache, context_cache, key_mask, phi = prefill(model, params, visual, tokens,
                                                          prompt_mask, t + k)
    cache = jax.tree.map(lambda x: jnp.repeat(x, c, axis=_batch_axis(config)), cache)
    key_mask = jnp.repeat(key_mask, c, axis=0).at[:, t:].set(flat_mask)
    context_length = jnp.repeat(prompt_mask.sum(axis=1), c)
    is_image = (flat_candidates == config.image_token_id) & flat_mask
    candidate_phi = jnp.repeat(phi[:, -1], c)[:, None] + jnp.cumsum(is_image, axis=1)
    step_logits, _ = decode_step(model, params, cache, context_cache, visual, flat_candidates,
                                 context_length[:, None] + jnp.arange(k), candidate_phi,
                                 jnp.asarray(t, jnp.int32), key_mask)
    # Token j of a candidate is predicted by the logits one slot before it.
    predicting = jnp.concatenate([jnp.repeat(logits[:, -1:], c, axis=0), step_logits[:, :-1]], 1)
  else:  # Every candidate re-runs the whole context (the images are still encoded once).
    full = jnp.concatenate([jnp.repeat(tokens, c, axis=0), flat_candidates], axis=1)
    full_mask = jnp.concatenate([jnp.repeat(prompt_mask, c, axis=0), flat_mask], axis=1)
    logits = prefill(model, params, jnp.repeat(visual, c, axis=0), full, full_mask, t + k,
                     every_position=True)[0]
    predicting = logits[:, t - 1:t + k - 1]
  logp = jax.nn.log_softmax(predicting, axis=-1)
  picked = jnp.take_along_axis(logp, flat_candidates[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(flat_mask, picked, 0.0), axis=1).reshape(b, c)


def score(config: FlamingoConfig, params, tokens, prompt_mask, images, candidates,
          candidate_mask, reuse_prefix: bool = True,
          mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Sum of log p(candidate tokens | prompt) -> [B, C] float32.

  tokens/prompt_mask/images as in `generate` (the shared context); candidates [B, C, K] int32 RIGHT
  padded, candidate_mask [B, C, K] bool. With `reuse_prefix` (the default) the context is run once
  and its cache shared by all C candidates; without it every candidate re-runs the context (the
  reference the benchmark compares against). `mesh`: as in `generate`.
  """
  tokens, prompt_mask, images = _as_inputs(tokens, prompt_mask, images)
  candidates, candidate_mask = jnp.asarray(candidates, jnp.int32), jnp.asarray(candidate_mask, bool)
  _check_inputs(config, tokens, prompt_mask, images)
  if candidates.ndim != 3 or candidates.shape[0] != tokens.shape[0]:
    raise ValueError(f"candidates must be [B={tokens.shape[0]}, C, K], got shape {candidates.shape}.")
  if candidate_mask.shape != candidates.shape:
    raise ValueError(f"candidate_mask {candidate_mask.shape} must have the shape of candidates "
                     f"{candidates.shape}.")
  return _on_mesh(mesh, lambda *rows: _score(config, params, *rows, reuse_prefix),
                  tokens, prompt_mask, images, candidates, candidate_mask)
