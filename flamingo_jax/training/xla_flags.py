"""XLA flags the trainer sets: on TPUs, collectives that overlap compute; on CPUs, less memory.

libtpu reads its compiler flags from the environment variable LIBTPU_INIT_ARGS once, when it loads.
`set_tpu_flags()` (called by the trainer and the ahead-of-time check before JAX starts a backend) adds
TPU_FLAGS to it; a flag the user already put there, by name, keeps the user's value, so any of them
can be overridden: LIBTPU_INIT_ARGS="--xla_enable_async_all_gather=false" python -m ... The
trainer's --tpu_flags=false leaves the variable alone. On CPUs and GPUs libtpu is not loaded and the
variable is ignored. `set_cpu_flags()` does the same with CPU_FLAGS and XLA_FLAGS (read when JAX
starts its first backend; the trainer's --cpu_flags=false leaves it alone).

The set follows MaxText's flag library (benchmarks/xla_flags_library.py in google/maxtext:
CF_FOR_ALL_GATHER and DATA_PARALLEL_OVERLAP), which its published v5p / v6e runs use.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV = "LIBTPU_INIT_ARGS"
CPU_ENV = "XLA_FLAGS"
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


CPU_FLAGS = (
    # The memory-optimized scheduler instead of the concurrency-optimized default. On the `bench`
    # step (2 cores): the step's buffers 1.14 -> 0.79 GB, the process's peak RSS 2.43 -> 2.08 GB,
    # step time within the noise (BENCHMARKS.md, peers).
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)


def _name(flag: str) -> str:
  return flag.split("=", 1)[0]


def with_flags(env: Mapping[str, str], variable: str, ours: tuple[str, ...]) -> str:
  """The value `variable` should have: `env`'s, then each flag of `ours` it does not name."""
  given = env.get(variable, "").split()
  names = {_name(flag) for flag in given}
  return " ".join(given + [flag for flag in ours if _name(flag) not in names])


def set_tpu_flags() -> None:
  """Adds TPU_FLAGS to this process's LIBTPU_INIT_ARGS (before libtpu loads, or it has no effect)."""
  os.environ[ENV] = with_flags(os.environ, ENV, TPU_FLAGS)


def set_cpu_flags() -> None:
  """Adds CPU_FLAGS to this process's XLA_FLAGS (before JAX starts a backend, or it has no
  effect)."""
  os.environ[CPU_ENV] = with_flags(os.environ, CPU_ENV, CPU_FLAGS)
