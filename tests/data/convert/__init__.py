"""Converter tests: one module per source, sharing the crafted corpus (corpus.py) and the checks
(check.py)."""

import pytest

pytest.register_assert_rewrite("tests.data.convert.check")
