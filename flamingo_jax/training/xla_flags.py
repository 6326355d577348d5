"""XLA flags the trainer sets for TPUs: collectives that overlap compute.

libtpu reads its compiler flags from the environment variable LIBTPU_INIT_ARGS once, when it loads.
`set_tpu_flags()` (called by the trainer and the ahead-of-time check before JAX starts a backend) adds
TPU_FLAGS to it; a flag the user already put there, by name, keeps the user's value, so any of them
can be overridden: LIBTPU_INIT_ARGS="--xla_enable_async_all_gather=false" python -m ... The
trainer's --tpu_flags=false leaves the variable alone. On CPUs and GPUs libtpu is not loaded and the
variable is ignored.

The set follows MaxText's flag library (benchmarks/xla_flags_library.py in google/maxtext:
CF_FOR_ALL_GATHER and DATA_PARALLEL_OVERLAP), which its published v5p / v6e runs use.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV = "LIBTPU_INIT_ARGS"
TPU_FLAGS = (
    # Continuation fusion: FSDP's all-gathers run asynchronously, fused with the compute that
    # follows them and overlapped with it on the TensorCore, across several steps ahead.
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
    # Data-parallel gradient all-reduces pipelined with the backward pass, sizes mixed.
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
)


def _name(flag: str) -> str:
  return flag.split("=", 1)[0]


def with_tpu_flags(env: Mapping[str, str]) -> str:
  """The value LIBTPU_INIT_ARGS should have: `env`'s, then each of TPU_FLAGS it does not name."""
  given = env.get(ENV, "").split()
  names = {_name(flag) for flag in given}
  return " ".join(given + [flag for flag in TPU_FLAGS if _name(flag) not in names])


def set_tpu_flags() -> None:
  """Adds TPU_FLAGS to this process's LIBTPU_INIT_ARGS (before libtpu loads, or it has no effect)."""
  os.environ[ENV] = with_tpu_flags(os.environ)
