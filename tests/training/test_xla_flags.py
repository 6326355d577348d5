"""The TPU flags the trainer sets: merged with the user's, and accepted by libtpu's compiler."""

import os
import subprocess
import sys

import pytest

from flamingo_jax.training import xla_flags

COMPILE = """
import jax, jax.numpy as jnp
from flamingo_jax import sharding
from flamingo_jax.training import aot, xla_flags
xla_flags.set_tpu_flags()
devices = aot.topology_devices(aot.parse_topology("v5e:2x2"))
mesh = sharding.make_mesh(data=1, fsdp=4, devices=devices)
spec = jax.sharding.NamedSharding(mesh, jax.P("fsdp"))
x = jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16, sharding=spec)
text = jax.jit(lambda a, b: a @ b.T).lower(x, x).compile().as_text()
print("all-gather" in text)
"""


def test_the_users_flags_win_by_name_and_ours_are_added():
  env = {xla_flags.ENV: "--xla_enable_async_all_gather=false --xla_other=1"}
  merged = xla_flags.with_flags(env, xla_flags.ENV, xla_flags.TPU_FLAGS).split()
  assert merged[:2] == ["--xla_enable_async_all_gather=false", "--xla_other=1"]
  assert merged[2:] == [f for f in xla_flags.TPU_FLAGS if not f.startswith("--xla_enable_async")]
  assert xla_flags.with_flags({}, xla_flags.ENV, xla_flags.TPU_FLAGS).split() == list(
      xla_flags.TPU_FLAGS)
  cpu = {xla_flags.CPU_ENV: "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
  assert xla_flags.with_flags(cpu, xla_flags.CPU_ENV, xla_flags.CPU_FLAGS) == cpu[xla_flags.CPU_ENV]
  assert xla_flags.with_flags({xla_flags.CPU_ENV: "--xla_dump_to=d"}, xla_flags.CPU_ENV,
                              xla_flags.CPU_FLAGS).split() == [
      "--xla_dump_to=d", "--xla_cpu_enable_concurrency_optimized_scheduler=false"]


def test_libtpu_compiles_with_the_flags():
  pytest.importorskip("libtpu")
  env = {k: v for k, v in os.environ.items() if k != xla_flags.ENV}
  run = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split()[-1] == "True"
