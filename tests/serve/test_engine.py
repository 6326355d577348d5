"""The continuous-batching engine (flamingo_jax/inference/engine.py) against `decoding.generate` on
each request alone, on the tiny model."""

import numpy as np
import pytest

from flamingo_jax.config import SamplingConfig, ServeConfig
from flamingo_jax.inference.engine import Admission, Engine, Finished, batch_buckets, prompt_buckets
from tests.builders import init_params, open_gates, tiny_config
from tests.serve.alone import generate_alone

MAX_NEW = 8


def _request(config, length, num_images, seed):
  """Random prompt ids [length] with `num_images` `<image>` tokens (the first one first) and its
  images [num_images, 1, H, W, 3] uint8."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.lm.vocab_size, length)
  tokens[np.linspace(0, length - 2, num_images).astype(int)] = config.image_token_id
  size = config.vision.image_size
  return tokens.tolist(), rng.integers(0, 256, (num_images, 1, size, size, 3), dtype=np.uint8)


def _alone(config, params, tokens, images, stop_tokens, max_new_tokens):
  return generate_alone(config, params, tokens, images, stop_tokens, max_new_tokens, MAX_NEW)


def test_prompt_buckets():
  assert prompt_buckets(100) == (16, 32, 64, 100)
  assert prompt_buckets(64) == (16, 32, 64)
  assert prompt_buckets(10) == (10,)
  assert batch_buckets(8) == (1, 2, 4, 8)
  assert batch_buckets(6) == (1, 2, 4, 6)


def test_a_request_decodes_as_it_does_alone_whatever_else_is_in_the_rows():
  """Two rows, five requests of different lengths, image counts and max_new_tokens: the first two
  admitted together (one prefill: 6 and 11 tokens, 1 and 2 images), the others while the other row
  is mid-request; a finished request's row takes the next one. Every answer is the
  greedy continuation `decoding.generate` gives the request alone, stop token and all."""
  config = tiny_config()
  params = open_gates(init_params(config))
  shapes = [(6, 1, 8), (11, 2, 5), (6, 1, 3), (11, 2, 8), (6, 1, 8)]  # Length, images, max new.
  requests = [_request(config, n, k, seed) for seed, (n, k, _) in enumerate(shapes)]
  # A stop token the model does pick: the first change of token in the second request's continuation.
  second = _alone(config, params, *requests[1], (config.eoc_token_id,) * 2, MAX_NEW)[0]
  stops = (config.eoc_token_id, next(t for t in second if t != second[0]))
  expected = {i: _alone(config, params, *requests[i], stops, shapes[i][2])
              for i in range(len(requests))}
  assert expected[1] == (second[:second.index(stops[1])], "stop")

  engine = Engine(config, params, ServeConfig(slots=2, max_prompt_tokens=16, max_images=2,
                                              sampling=SamplingConfig(max_new_tokens=MAX_NEW)),
                  stops)
  answers, waiting = {}, list(range(len(requests)))
  steps = 0
  while waiting or engine.free < 2:
    if waiting and engine.free and steps % 2 == 0:  # Admitted at every other step at most.
      batch = [waiting.pop(0) for _ in range(min(engine.free, len(waiting)))]
      for done in engine.admit([Admission(i, *requests[i], shapes[i][2]) for i in batch]):
        answers[done.handle] = (done.tokens, done.stop_reason)
    answers.update({f.handle: (f.tokens, f.stop_reason) for f in engine.step()})
    steps += 1
  assert answers == expected


def test_cancel_frees_the_row_and_max_new_tokens_is_checked():
  config = tiny_config()
  params = open_gates(init_params(config))
  engine = Engine(config, params, ServeConfig(slots=2, max_prompt_tokens=16, max_images=2,
                                              sampling=SamplingConfig(max_new_tokens=MAX_NEW)),
                  ())
  tokens, images = _request(config, 6, 1, 0)
  assert engine.admit([Admission("a", tokens, images, MAX_NEW),
                       Admission("b", tokens[1:5], images[:0], MAX_NEW)]) == []
  assert (engine.free, engine.handles) == (0, ["a", "b"])
  engine.cancel("a")
  assert (engine.free, engine.handles) == (1, ["b"])
  with pytest.raises(ValueError, match="max_new_tokens=9; 1 to 8 fit"):
    engine.admit([Admission("c", tokens, images, MAX_NEW + 1)])
  with pytest.raises(RuntimeError, match="admit: 2 requests for 1 free rows"):
    engine.admit([Admission("c", tokens, images, MAX_NEW)] * 2)
  steps = [engine.step() for _ in range(MAX_NEW - 1)]
  assert [len(s) for s in steps] == [0] * (MAX_NEW - 2) + [1]
  assert steps[-1][0] == Finished("b", steps[-1][0].tokens, "length")
  assert len(steps[-1][0].tokens) == MAX_NEW
