"""Serving settings: `ServeConfig`, read by `python -m flamingo_jax.serve` (`--serve.<field>=`) and
its continuous-batching engine (flamingo_jax/inference/engine.py)."""

from __future__ import annotations

import dataclasses

from flamingo_jax.config.evaluation import SamplingConfig
from flamingo_jax.config.schema import Section, fail, join, positive

SERVED_STRATEGIES = ("greedy", "sample")  # Beam search is not served: its beams share no slot.


@dataclasses.dataclass(frozen=True)
class ServeConfig(Section):
  """The HTTP server: its decode batch, cache length and request limits (each a 4xx naming it)."""

  slots: int = 8  # Sequences decoded together at each step (the decode batch B).
  max_prompt_tokens: int = 256  # Longest prompt, `<image>` tokens included.
  max_images: int = 4  # Images per request.
  max_pixels: int = 16_000_000  # Pixels (width x height) per image, read from its header.
  max_body_bytes: int = 16_000_000  # Request body; also the largest image file read from a path.
  max_candidates: int = 16  # /score: candidates per request.
  max_candidate_tokens: int = 32  # /score: tokens per candidate.
  max_waiting: int = 256  # Requests queued for a slot; more get 503.
  timeout_s: float = 60.0  # Per request, from its arrival to its answer; then 504.
  image_root: str = ""  # Requests' image paths must resolve under it; "" refuses paths.
  # Every request generates max_new_tokens tokens, stop tokens included: fixed-length generation for
  # throughput measurements (benchmarks/serve.py), not for answers.
  ignore_stop_tokens: bool = False
  seed: int = 0  # sample: the engine's random key.
  # How tokens are picked (greedy or sample); max_new_tokens is the default and the cap per request.
  sampling: SamplingConfig = SamplingConfig(strategy="greedy", max_new_tokens=32)

  def check(self, prefix: str) -> None:
    positive(prefix, self, "slots", "max_prompt_tokens", "max_images", "max_pixels",
             "max_body_bytes", "max_candidates", "max_candidate_tokens", "max_waiting",
             "timeout_s")
    if self.sampling.strategy not in SERVED_STRATEGIES:
      fail(join(prefix, "sampling.strategy"), self.sampling.strategy,
           f"the server decodes with one of {', '.join(SERVED_STRATEGIES)}; beam search is not "
           "served (use python -m flamingo_jax.inference.generate).")

  @property
  def cache_length(self) -> int:
    """Self-attention cache slots per sequence: the longest prompt and every new token."""
    return self.max_prompt_tokens + self.sampling.max_new_tokens
