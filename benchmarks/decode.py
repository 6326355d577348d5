r"""Decode benchmark: cached generation vs recomputing the full forward per token; scoring with and
without prefix reuse.

  python benchmarks/decode.py [--preset bench] [--batches 1,8] [--prompt_len 256] [--images 4]
                              [--new_tokens 16] [--cached_new_tokens 64] [--candidates 4]
                              [--candidate_len 8] [--repeats 3]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}. Both decoders are greedy, compiled
once, from the same random `bench` params (gates opened to 0.5, so the images matter), on B prompts
of `prompt_len` tokens with `images` images, and must produce the same first `new_tokens` tokens
(`same_tokens`).
* cached: `decoding.generate` (prefill with the images' keys/values computed once, then one token
  per step through the key/value cache).
* recompute: one jitted loop that runs the whole model (vision tower, resampler, LM over the
  right-padded [B, prompt_len + new_tokens] buffer) for every new token, as the PyTorch peers do.
Per-token decode time: recompute = its loop time for new_tokens / new_tokens (every step costs the
same; timed once, compiled beforehand); cached = (time for cached_new_tokens - time for 1 token) /
(cached_new_tokens - 1), i.e. without the one-off prefill (many tokens, so the prefill's timing noise
is divided away). `cached_over_recompute_<prompt_len>` is their ratio (target >= 10 at 256); the
end-to-end times of a new_tokens request (prefill included) are printed too. Scoring: `decoding.score` of C candidates of
`candidate_len` tokens after the prompt, with the context run once (`reuse_prefix`) or per candidate.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

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

emit = emitter("decode")


@functools.partial(jax.jit, static_argnames=("config", "new_tokens"))
def recompute_greedy(config: FlamingoConfig, params, tokens, images, new_tokens: int):
  """Greedy decoding that re-runs the full forward (images included) for every new token."""
  b, t = tokens.shape
  model = Flamingo(config)

  def body(i, buffer):
    phi = masking.media_index(buffer, config.image_token_id)
    logits = model.apply({"params": params}, buffer, images, phi)
    next_token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t + i - 1, 1, False), axis=-1)
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

  long_n = args.cached_new_tokens
  cached_tokens = jax.block_until_ready(cached(long_n))
  for max_new in (1, n):
    jax.block_until_ready(cached(max_new))
  recompute = recompute_greedy.lower(config, params, tokens, images, n).compile()
  start = time.perf_counter()
  recomputed = jax.block_until_ready(recompute(params, tokens, images))
  recompute_s = time.perf_counter() - start
  same = bool((np.asarray(cached_tokens)[:, :n] == np.asarray(recomputed)).all())
  cached_s = timed(cached, n, repeats=args.repeats)
  prefill_s = timed(cached, 1, repeats=args.repeats)
  long_s = timed(cached, long_n, repeats=args.repeats)
  cached_token_s = (long_s - prefill_s) / (long_n - 1)
  recompute_token_s = recompute_s / n
  emit(f"cached_request_s_b{batch}", cached_s, "s", **tag)
  emit(f"cached_prefill_and_first_token_s_b{batch}", prefill_s, "s", **tag)
  emit(f"cached_request_{long_n}_tokens_s_b{batch}", long_s, "s", **tag)
  emit(f"recompute_request_s_b{batch}", recompute_s, "s", **tag)
  emit(f"cached_decode_tokens_per_s_b{batch}", batch / cached_token_s, "tokens/s", **tag)
  emit(f"recompute_decode_tokens_per_s_b{batch}", batch / recompute_token_s, "tokens/s", **tag)
  emit(f"cached_over_recompute_{args.prompt_len}_b{batch}", recompute_token_s / cached_token_s,
       "ratio", same_tokens=same, target=10, **tag)
  emit(f"cached_over_recompute_request_{args.prompt_len}_b{batch}", recompute_s / cached_s, "ratio",
       same_tokens=same, **tag)

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
  return recompute_token_s / cached_token_s


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--preset", default="bench")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--prompt_len", type=int, default=256)
  parser.add_argument("--images", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=16)
  parser.add_argument("--cached_new_tokens", type=int, default=64)
  parser.add_argument("--candidates", type=int, default=4)
  parser.add_argument("--candidate_len", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  if not 2 <= args.new_tokens <= args.cached_new_tokens:
    parser.error("need 2 <= --new_tokens <= --cached_new_tokens (the cached per-token time is a "
                 "difference; the recomputed tokens are compared with the cached ones).")
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
