"""Continuous batching: B decode rows stepped together, each row a request at its own point.

The device state (`Rows`, donated to and replaced by every call) holds, for each row b < B:
  cache          the LM's self-attention keys/values, leaves [B, K, ., .] (layers.CACHE_AXES: keys
                 [B, K, S, Dh], values [B, K, Dh, S]; batch on axis 0 once
                 `decoding.decoding_model` unrolls the layers; [units, B, ...] when scanned)
  context_cache  the gated blocks' visual keys/values, the same layout over N * R slots
                 (N = max_images): computed once per request, when it is admitted; the steps only
                 read them
  key_mask [B, S] bool   the cache slots holding real tokens (False on a prompt's left padding)
  index [B] int32        the cache slot the row's next fed token goes to
  position [B] int32     that token's position (the real tokens before it)
  phi [B] int32          its media index (the `<image>` tokens up to and including it)
  num_images [B] int32   the request's images: a generated `<image>` past them attends to none
  token [B] int32        the row's last picked token, fed at the next step
  rng                    the key `sample` draws from
Admitting requests (`Engine.admit`, into the lowest free rows) runs them together, K at a time (K a
power of two or B covering them: one compile per K): their images through the vision tower and the
resampler ([K, n] images, n the most any of them has: one compile per K x n), zeroed past each one's
count and padded to N; their prompts left-padded to one bucket of P tokens (powers of two from 16 up
to max_prompt_tokens: one compile per K x P) and prefilled into fresh caches of S =
max_prompt_tokens + max_new_tokens slots (`decoding.prefill`); their first tokens picked; their
caches, visual keys/values and row state scattered into their rows. A step (`Engine.step`) runs
`decoding.decode_step` once over the first U rows, U the power of two (or B) that covers every busy
row (one compile per U), each row at its own cache slot (`DecodeSlots.index` [U]), and picks their
next tokens (`decoding.pick`: greedy or sample); free rows below U compute values nobody reads, so a
lone request steps one row. The host books each request's tokens, ends it at a stop token (not
returned) or at its max_new_tokens, and frees its row for the next request.

A greedy request decodes as `decoding.generate` does it alone: padded slots, padded images and the
other rows are masked out. Beam search is not served (its beams would need rows of their own).
Scoring (`Engine.score`) is not batched across requests: it runs `decoding.score` on the one request.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Hashable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.config import FlamingoConfig, SamplingConfig, ServeConfig
from flamingo_jax.inference import decoding
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import tree as ptree

SMALLEST_BUCKET = 16


class Rows(NamedTuple):
  """The B rows' decoding state on the device (see the module docstring)."""
  cache: ptree.Params
  context_cache: ptree.Params
  key_mask: jax.Array
  index: jax.Array
  position: jax.Array
  phi: jax.Array
  num_images: jax.Array
  token: jax.Array
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Finished:
  """A request's answer: its new tokens (a stop token not included) and why it ended: "stop" (a
  stop token) or "length" (max_new_tokens)."""
  handle: Hashable
  tokens: tuple[int, ...]
  stop_reason: str


class Admission(NamedTuple):
  """A request for a row: prompt ids [T] (T <= max_prompt_tokens, one `<image>` per image), images
  [n, F, H, W, 3] uint8 (n <= max_images; 0: text only), at most max_new_tokens new tokens."""
  handle: Hashable
  tokens: Sequence[int]
  images: np.ndarray
  max_new_tokens: int


@dataclasses.dataclass
class _Request:
  handle: Hashable
  max_new_tokens: int
  tokens: list[int]


def prompt_buckets(max_prompt_tokens: int) -> tuple[int, ...]:
  """The padded prompt lengths: 16, 32, 64, ... below max_prompt_tokens, then max_prompt_tokens."""
  smaller = []
  while (SMALLEST_BUCKET << len(smaller)) < max_prompt_tokens:
    smaller.append(SMALLEST_BUCKET << len(smaller))
  return (*smaller, max_prompt_tokens)


def _left_padded(prompts: Sequence[Sequence[int]], rows: int, length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts (ids) -> (tokens [rows, length] int32, mask [rows, length] bool), each left padded
  with zeros; rows past the prompts hold one masked-in 0 (padding entries, never read)."""
  out, mask = np.zeros((rows, length), np.int32), np.zeros((rows, length), bool)
  mask[len(prompts):, -1] = True
  for row, tokens in enumerate(prompts):
    out[row, length - len(tokens):], mask[row, length - len(tokens):] = tokens, True
  return out, mask


def batch_buckets(slots: int) -> tuple[int, ...]:
  """The batch sizes an admission or a step runs at: powers of two below slots, then slots."""
  return tuple(sorted({min(1 << k, slots) for k in range(slots.bit_length() + 1)}))


def _covering(rows: int, slots: int) -> int:
  """The smallest of batch_buckets(slots) >= rows."""
  return min(1 << (rows - 1).bit_length(), slots)


def _batch_axis(leaf: jax.Array) -> int:
  return leaf.ndim - 4  # Cache leaves end with [B, K, ., .]; stacked layers lead.


@functools.partial(jax.jit, static_argnames=("config", "max_images"))
def _encode(config: FlamingoConfig, params, images, counts, max_images: int):
  """images [K, n, F, H, W, 3] uint8, counts [K] (each row's real images) -> visual tokens
  [K, max_images, R, D], zeros past each row's count."""
  visual = Flamingo(config).apply({"params": params}, images, method=Flamingo.encode_images)
  visual = jnp.pad(visual, ((0, 0), (0, max_images - visual.shape[1]), (0, 0), (0, 0)))
  real = jnp.arange(max_images)[None, :] < counts[:, None]
  return jnp.where(real[:, :, None, None], visual, jnp.zeros_like(visual))


@functools.partial(jax.jit, static_argnames=("config", "sampling"), donate_argnames=("rows",))
def _admit(config: FlamingoConfig, sampling: SamplingConfig, params, rows: Rows, slots, tokens,
           token_mask, visual, num_images):
  """Prefills tokens [K, P] (token_mask [K, P]) on visual [K, N, R, D] into the rows `slots` [K]
  (B: a padding entry, dropped) -> (rows, their first tokens [K])."""
  model = Flamingo(config)
  logits, cache, context_cache, key_mask, phi = decoding.prefill(
      model, params, visual, tokens, token_mask, rows.key_mask.shape[1])
  rng, key = jax.random.split(rows.rng)
  first = decoding.pick(logits[:, -1], sampling, key)

  def put(whole, new, axis=0):
    at = (slice(None),) * axis + (slots,)
    return whole.at[at].set(new.astype(whole.dtype), mode="drop")

  put_rows = lambda whole, new: put(whole, new, _batch_axis(whole))  # noqa: E731
  return Rows(
      jax.tree.map(put_rows, rows.cache, cache), jax.tree.map(put_rows, rows.context_cache,
                                                              context_cache),
      put(rows.key_mask, key_mask), put(rows.index, jnp.full(slots.shape, tokens.shape[1])),
      put(rows.position, jnp.sum(token_mask, axis=1)),
      put(rows.phi, phi[:, -1] + (first == config.image_token_id)),
      put(rows.num_images, num_images), put(rows.token, first), rng), first


@functools.partial(jax.jit, static_argnames=("config", "sampling", "used"),
                   donate_argnames=("rows",), compiler_options=decoding.CACHE_COMPILER_OPTIONS)
def _step(config: FlamingoConfig, sampling: SamplingConfig, params, rows: Rows, visual, used: int):
  """One token for each of the first `used` rows -> (rows, the picked tokens [used]); the other
  rows are left as they are. visual [B, N, R, D] is only a shape: the gated blocks read their
  keys/values from rows.context_cache."""
  head = lambda x, axis=0: jax.lax.slice_in_dim(x, 0, used, axis=axis)  # noqa: E731
  part = Rows(*(jax.tree.map(lambda x: head(x, _batch_axis(x)), tree)
                for tree in (rows.cache, rows.context_cache)),
              *(head(x) for x in rows[2:-1]), rows.rng)
  # A generated `<image>` past the request's images attends to none, as in `decoding.generate`.
  phi = jnp.where(part.phi <= part.num_images, part.phi, 0)
  logits, cache = decoding.decode_step(
      Flamingo(config), params, part.cache, part.context_cache, head(visual), part.token[:, None],
      part.position[:, None], phi[:, None], part.index, part.key_mask)
  rng, key = jax.random.split(rows.rng)
  token = decoding.pick(logits[:, 0], sampling, key)
  put = lambda whole, new, axis=0: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
      whole, new, 0, axis)
  return rows._replace(
      cache=jax.tree.map(lambda w, n: put(w, n, _batch_axis(w)), rows.cache, cache),
      index=put(rows.index, part.index + 1), position=put(rows.position, part.position + 1),
      phi=put(rows.phi, part.phi + (token == config.image_token_id)),
      token=put(rows.token, token), rng=rng), token


class Engine:
  """B rows of continuous-batching decoding on one device (the module docstring has the layout).

  config, params: the model and its full param tree (`pretrained.load_trained`); serve: the rows
  (slots), the prompt and image limits, max_new_tokens (sampling.max_new_tokens) and how tokens are
  picked; stop_tokens: e.g. (config.eoc_token_id, tokenizer.eos_id).
  """

  def __init__(self, config: FlamingoConfig, params: ptree.Params, serve: ServeConfig,
               stop_tokens: Sequence[int]):
    serve.check("serve")
    self.serve, self.model_config, self.params = serve, config, params
    # Everything on one device, committed: a request's inputs and the state then always bring the
    # same shardings, so each shape compiles once (in `warm_up`).
    self.device = next(iter(jax.tree.leaves(params)[0].devices()))
    self.config, self.decoding_params = decoding.decoding_model(
        config, jax.device_put(params, self.device))
    self.stop_tokens = frozenset(int(t) for t in stop_tokens)
    self._requests: list[_Request | None] = [None] * serve.slots
    size = config.vision.image_size
    self._no_image = np.zeros((1, 1, size, size, 3), np.uint8)
    visual = jax.eval_shape(functools.partial(_encode, self.config, max_images=serve.max_images),
                            self.decoding_params, self._no_image[None], np.ones((1,), np.int32))
    self._visual = jax.device_put(jnp.zeros((serve.slots, *visual.shape[1:]), visual.dtype),
                                  self.device)
    self.reset()

  def reset(self) -> None:
    """Every row free, the device state rebuilt (after an error left it unknown)."""
    self._requests = [None] * self.serve.slots
    b, s = self.serve.slots, self.serve.cache_length
    shapes = jax.eval_shape(
        lambda p, v: decoding.prefill(Flamingo(self.config), p, v, jnp.zeros((b, 1), jnp.int32),
                                      jnp.ones((b, 1), bool), s), self.decoding_params, self._visual)
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)  # noqa: E731
    per_row = [jnp.zeros((b,), jnp.int32) for _ in range(5)]  # Distinct buffers: all donated.
    self._rows = jax.device_put(Rows(zeros(shapes[1]), zeros(shapes[2]), jnp.ones((b, s), bool),
                                     *per_row, jax.random.key(self.serve.seed)), self.device)

  def warm_up(self) -> None:
    """Compiles what requests run (admissions of each batch size with 1..max_images images and each
    prompt bucket, the steps), so that no request waits for a compile; every row is left free."""
    serve, size = self.serve, self.model_config.vision.image_size
    for k in batch_buckets(serve.slots):
      drop = np.full((k,), serve.slots, np.int32)  # Every entry padding: no row is written.
      for n in range(1, serve.max_images + 1):
        _encode(self.config, self.decoding_params, np.zeros((k, n, 1, size, size, 3), np.uint8),
                np.zeros((k,), np.int32), serve.max_images)
      for length in prompt_buckets(serve.max_prompt_tokens):
        self._rows, _ = _admit(self.config, serve.sampling, self.decoding_params, self._rows, drop,
                               *_left_padded([], k, length), self._visual[:k], drop)
      self._rows, tokens = _step(self.config, serve.sampling, self.decoding_params, self._rows,
                                 self._visual, k)
    jax.block_until_ready(tokens)
    self.reset()

  @property
  def free(self) -> int:
    """Rows without a request."""
    return self._requests.count(None)

  @property
  def handles(self) -> list[Hashable]:
    """The handles of the requests in the rows."""
    return [r.handle for r in self._requests if r is not None]

  def check(self, request: Admission) -> None:
    """Raises ValueError if `request` does not fit the engine's limits."""
    serve = self.serve
    if not 0 < len(request.tokens) <= serve.max_prompt_tokens:
      raise ValueError(f"admit: {len(request.tokens)} prompt tokens; 1 to "
                       f"{serve.max_prompt_tokens} fit.")
    if not 0 < request.max_new_tokens <= serve.sampling.max_new_tokens:
      raise ValueError(f"admit: max_new_tokens={request.max_new_tokens}; 1 to "
                       f"{serve.sampling.max_new_tokens} fit.")
    if len(request.images) > serve.max_images:
      raise ValueError(f"admit: {len(request.images)} images; at most {serve.max_images} fit.")

  def admit(self, requests: Sequence[Admission]) -> list[Finished]:
    """Puts requests (at most `free`, each passing `check`) into the lowest free rows, prefilled
    together. Returns the answers of those whose first token already ends them; the others are in
    rows (`step` returns them when done)."""
    if not 0 < len(requests) <= self.free:
      raise RuntimeError(f"admit: {len(requests)} requests for {self.free} free rows.")
    for request in requests:
      self.check(request)
    k, serve = _covering(len(requests), self.serve.slots), self.serve
    length = self._bucket(max(len(r.tokens) for r in requests))
    counts = np.zeros((k,), np.int32)
    counts[:len(requests)] = [len(r.images) for r in requests]
    visual = self._visual[:k]
    if counts.max():
      frame = next(r.images for r in requests if len(r.images)).shape[1:]  # [F, H, W, 3]
      images = np.zeros((k, counts.max(), *frame), np.uint8)
      for row, request in enumerate(requests):
        images[row, :len(request.images)] = request.images
      visual = _encode(self.config, self.decoding_params, images, counts, serve.max_images)
    rows = [row for row, r in enumerate(self._requests) if r is None][:len(requests)]
    slots = np.full((k,), serve.slots, np.int32)
    slots[:len(rows)] = rows
    self._rows, first = _admit(self.config, serve.sampling, self.decoding_params, self._rows, slots,
                               *_left_padded([r.tokens for r in requests], k, length), visual,
                               counts)
    first = np.asarray(first)
    booked = (self._book(row, _Request(r.handle, r.max_new_tokens, []), int(first[i]))
              for i, (row, r) in enumerate(zip(rows, requests)))
    return [f for f in booked if f is not None]

  def step(self) -> list[Finished]:
    """One new token for every request in a row -> the requests that ended with it."""
    if self.free == len(self._requests):
      return []
    last = max(row for row, r in enumerate(self._requests) if r is not None)
    # The rows a step runs: a bucket covering every busy row (requests take the lowest free rows,
    # so a lone request steps alone).
    self._rows, tokens = _step(self.config, self.serve.sampling, self.decoding_params, self._rows,
                               self._visual, _covering(last + 1, self.serve.slots))
    tokens = np.asarray(tokens)
    finished = (self._book(row, request, int(tokens[row]))
                for row, request in enumerate(self._requests) if request is not None)
    return [f for f in finished if f is not None]

  def cancel(self, handle: Hashable) -> None:
    """Frees the row of the request `handle` (e.g. its client gave up)."""
    self._requests = [None if r is not None and r.handle == handle else r for r in self._requests]

  def score(self, tokens: Sequence[int], images: np.ndarray,
            candidates: Sequence[Sequence[int]]) -> np.ndarray:
    """log p(candidate | prompt) of each candidate -> [C] float32, by `decoding.score` on this one
    request (not batched with others): the prompt left-padded to its bucket, the candidates right
    padded to a power of two of tokens (each new bucket x candidates x width x images compiles on
    first use); images as in `admit`."""
    if not candidates or not all(candidates):
      raise ValueError("score: give one or more candidates, each of one or more tokens.")
    padded, mask = _left_padded([tokens], 1, self._bucket(len(tokens)))
    width = 1 << (max(map(len, candidates)) - 1).bit_length()
    ids = np.zeros((1, len(candidates), width), np.int32)
    for c, candidate in enumerate(candidates):
      ids[0, c, :len(candidate)] = candidate
    scores = decoding.score(self.model_config, self.params, padded, mask,
                            (images if len(images) else self._no_image)[None], ids,
                            np.arange(width) < np.asarray([[len(c)] for c in candidates])[None])
    return np.asarray(scores)[0]

  def _bucket(self, length: int) -> int:
    """The prompt bucket of a prompt of `length` tokens."""
    return next(b for b in prompt_buckets(self.serve.max_prompt_tokens) if b >= length)

  def _book(self, row: int, request: _Request, token: int) -> Finished | None:
    """Adds the row's new token to its request -> its answer if that ended it (freeing the row)."""
    stop = token in self.stop_tokens and not self.serve.ignore_stop_tokens
    if not stop:
      request.tokens.append(token)
    done = stop or len(request.tokens) == request.max_new_tokens
    self._requests[row] = None if done else request
    if done:
      return Finished(request.handle, tuple(request.tokens), "stop" if stop else "length")
    return None
