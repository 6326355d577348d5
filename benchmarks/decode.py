r"""Decode benchmark: cached generation against the best loop without a cache; scoring with and
without prefix reuse.

  python benchmarks/decode.py [--preset bench] [--batches 1,8] [--prompt_len 256] [--images 4]
                              [--new_tokens 32] [--candidates 4] [--candidate_len 8] [--repeats 3]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}. Both decoders are greedy, compiled
once, from the same random `bench` params (gates opened to 0.5, so the images matter), on B prompts
of `prompt_len` tokens with `images` images, and must produce the same `new_tokens` tokens
(`same_tokens`). Both are timed the same way: a whole request (prefill and every new token), median
of `repeats` runs after a warm-up.
* cached: `decoding.generate` (prefill with the images' keys/values computed once, then one token
  per step through the key/value cache).
* uncached: the best loop without a cache, one jitted loop (compiled with the cached loop's XLA
  options): the images encoded (vision tower and resampler) once per request, then for every new
  token the LM with its gated blocks over the right-padded [B, prompt_len + new_tokens] buffer
  (causal, so the padding changes nothing), with logits at the last position only
  (`DecoderLM(logits_at=...)`).
`cached_over_recompute_<prompt_len>` = uncached / cached request time, the minimum over batches
(target >= 10 at 256). `cached_decode_tokens_per_s_b<B>` is the cached loop's rate without its
prefill: (time for new_tokens - time for 1 token) / (new_tokens - 1). Scoring: `decoding.score` of C
candidates of `candidate_len` tokens after the prompt, with the context run once (`reuse_prefix`) or
per candidate.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment, make_batch, timed  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import FlamingoConfig, SamplingConfig  # noqa: E402
from flamingo_jax.inference import decoding  # noqa: E402
from flamingo_jax.models import masking  # noqa: E402
from flamingo_jax.models.flamingo import Flamingo  # noqa: E402
from flamingo_jax.models.lm import DecoderLM  # noqa: E402

emit = emitter("decode")


@functools.partial(jax.jit, static_argnames=("config", "new_tokens"),
                   compiler_options=decoding.CACHE_COMPILER_OPTIONS)
def uncached_greedy(config: FlamingoConfig, params, tokens, images, new_tokens: int):
  """Greedy decoding without a key/value cache: images encoded once, then the LM over the whole
  buffer for every new token, logits at the last filled position only."""
  b, t = tokens.shape
  visual = Flamingo(config).apply({"params": params}, images, method=Flamingo.encode_images)
  lm = DecoderLM(config.lm, config.execution, xattn=config.xattn,
                 num_extra_tokens=config.num_extra_tokens)

  def body(i, buffer):
    phi = masking.media_index(buffer, config.image_token_id)
    logits = lm.apply({"params": params["lm"]}, buffer, visual, phi,
                      logits_at=jnp.full((b,), t + i - 1))
    next_token = jnp.argmax(logits[:, 0], axis=-1)
    return jax.lax.dynamic_update_index_in_dim(buffer, next_token.astype(jnp.int32), t + i, 1)

  buffer = jnp.concatenate([tokens, jnp.zeros((b, new_tokens), jnp.int32)], axis=1)
  return jax.lax.fori_loop(0, new_tokens, body, buffer)[:, t:]


def open_gates(params):
  def open_gate(path, x):
    return jnp.full_like(x, 0.5) if path[-1].key in ("attn_gate", "ffw_gate") else x
  return jax.tree_util.tree_map_with_path(open_gate, params)


def bench_batch(config, params, batch: int, args):
  tokens, images, _ = make_batch(config, batch, args.prompt_len, args.images)
  mask = jnp.ones_like(tokens, bool)
  n, tag = args.new_tokens, dict(batch=batch, prompt_len=args.prompt_len, images=args.images,
                                 new_tokens=args.new_tokens)

  def cached(max_new):
    sampling = SamplingConfig(max_new_tokens=max_new)
    return decoding.generate(config, params, tokens, mask, images, sampling, stop_tokens=())[0]

  uncached = uncached_greedy.lower(config, params, tokens, images, n).compile()
  same = bool((np.asarray(cached(n)) == np.asarray(uncached(params, tokens, images))).all())
  jax.block_until_ready(cached(1))
  cached_s = timed(cached, n, repeats=args.repeats)
  uncached_s = timed(uncached, params, tokens, images, repeats=args.repeats)
  first_s = timed(cached, 1, repeats=args.repeats)
  emit(f"cached_request_s_b{batch}", cached_s, "s", **tag)
  emit(f"cached_prefill_and_first_token_s_b{batch}", first_s, "s", **tag)
  emit(f"uncached_request_s_b{batch}", uncached_s, "s", **tag)
  emit(f"cached_decode_tokens_per_s_b{batch}", batch * (n - 1) / (cached_s - first_s), "tokens/s",
       **tag)
  emit(f"cached_over_recompute_{args.prompt_len}_b{batch}", uncached_s / cached_s, "ratio",
       same_tokens=same, target=10, **tag)

  rng = np.random.default_rng(1)
  c, k = args.candidates, args.candidate_len
  candidates = jnp.asarray(rng.integers(0, config.lm.vocab_size, (batch, c, k)), jnp.int32)
  candidate_mask = jnp.ones((batch, c, k), bool)
  score = {reuse: functools.partial(decoding.score, config, params, tokens, mask, images, candidates,
                                    candidate_mask, reuse_prefix=reuse) for reuse in (True, False)}
  scores = {reuse: np.asarray(jax.block_until_ready(fn())) for reuse, fn in score.items()}
  agree = float(np.abs(scores[True] - scores[False]).max())
  seconds = {reuse: timed(fn, repeats=args.repeats) for reuse, fn in score.items()}
  tag.update(candidates=c, candidate_len=k)
  emit(f"score_reuse_s_b{batch}", seconds[True], "s", **tag)
  emit(f"score_no_reuse_s_b{batch}", seconds[False], "s", **tag)
  emit(f"score_no_reuse_over_reuse_b{batch}", seconds[False] / seconds[True], "ratio",
       max_abs_logprob_diff=agree, **tag)
  return uncached_s / cached_s


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--prompt_len", type=int, default=256)
  parser.add_argument("--images", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--candidates", type=int, default=4)
  parser.add_argument("--candidate_len", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if args.new_tokens < 2:
    parser.error("need --new_tokens >= 2 (the cached per-token rate is a difference of two times).")
  environment(emit)
  config = FlamingoConfig.from_dict(presets.get_config(args.preset).model)
  model = Flamingo(config)
  params = open_gates(nn.meta.unbox(jax.jit(model.init)(
      jax.random.key(0), *make_batch(config, 1, 8, 1))["params"]))
  ratios = [bench_batch(config, params, int(b), args) for b in args.batches.split(",")]
  emit(f"cached_over_recompute_{args.prompt_len}", min(ratios), "ratio", target=10,
       note="min over batches " + args.batches)


if __name__ == "__main__":
  main()
