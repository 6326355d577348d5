"""Test session set-up: 8 virtual CPU devices (for the mesh tests); the `tiny` model fixture.

Shared builders live in tests/builders.py (models) and tests/data/builders.py (records, images)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 virtual CPU devices for the mesh tests; LLVM optimisation off: compiles ~30% faster, and the
# tests' programs are tiny. Subprocesses started by tests inherit both.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

from tests.builders import tiny_config  # noqa: E402


@pytest.fixture
def tiny():
  return tiny_config()
