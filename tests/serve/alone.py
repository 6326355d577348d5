"""What `decoding.generate` answers a request alone: the reference of the engine and server tests."""

import numpy as np

from flamingo_jax.config import SamplingConfig
from flamingo_jax.inference import decoding


def generate_alone(config, params, tokens, images, stop_tokens, max_new_tokens, cap):
  """Greedy `decoding.generate` on one request: tokens [T] ids, images [n, 1, H, W, 3] uint8, cap
  new tokens (one compile per prompt shape), cut at max_new_tokens (greedy tokens do not depend on
  how many follow) -> (new tokens, "stop" | "length") as the engine answers."""
  new, length = decoding.generate(config, params, np.asarray([tokens], np.int32),
                                  np.ones((1, len(tokens)), bool), images[None],
                                  SamplingConfig(max_new_tokens=cap), stop_tokens)
  new = np.asarray(new)[0, :min(int(length[0]), max_new_tokens)].tolist()
  return tuple(new), "stop" if len(new) < max_new_tokens else "length"
