"""Fixtures of the evaluation tests: a small sentencepiece tokenizer."""

import numpy as np
import pytest

from data_pipelines import tokenizer as tokenizer_lib


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  """A 300-piece sentencepiece model (byte fallback: every string encodes)."""
  path = str(tmp_path_factory.mktemp("tok") / "tok.model")
  words = ("a the dog cat red blue green what is on table output question answer yes no "
           "colour image man woman sits runs two three abcdefghij").split()
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(words, 8)) for _ in range(2000)]
  tokenizer_lib.train(sentences, path, vocab_size=300)
  return tokenizer_lib.Tokenizer(path)
