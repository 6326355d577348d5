"""Fixtures of the data-pipeline tests: the demo corpus (built once per test session, ~5 s) and its
tokenizer."""

import pytest

from data_pipelines import demo
from data_pipelines.tokenizer import Tokenizer
from tests.builders import DEMO_SIZES


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("demo"))
  return root, demo.build(root, sizes=DEMO_SIZES)


@pytest.fixture(scope="session")
def tokenizer(demo_corpus):
  return Tokenizer(demo_corpus[1]["tokenizer"])
