"""How parameters and activations are laid out on the device mesh.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism that also shards
parameters and optimiser state) and `tensor` (model parallelism inside matmuls). Modules name their
axes logically (`layers.py`); RULES below maps those names to mesh axes. A logical name not listed is
replicated. The frozen towers may be laid out apart from the trainable tree (`mesh.frozen`:
FROZEN_RULES). Change the layout by editing these tables, not the modules.

The processes that share a mesh (several hosts: one process each) start with `initialize_processes`,
from the flags `define_process_flags` defines (training and evaluation take the same ones).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator

import flax.linen as nn
import jax
from absl import flags
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")

ACTIVATION_RULES = (
    ("batch", ("data", "fsdp")),  # Examples split over every data-parallel device.
    ("act_heads", "tensor"),  # Attention heads of q / attention output.
    ("act_mlp", "tensor"),  # FFN hidden activations.
    ("act_vocab", "tensor"),  # Logits.
)
PARAMETER_RULES = (
    ("embed", "fsdp"),  # Model width of every weight: ZeRO-3 style sharding over fsdp.
    ("mlp", "tensor"),  # FFN hidden width (Megatron column / row split).
    ("heads", "tensor"),  # Query heads.
    ("kv_heads", "tensor"),  # Key / value heads (must be divisible by the tensor size).
    ("vocab", "tensor"),  # Embedding rows and output columns.
    # Replicated: length, act_embed, kv (head width), layers (scan axis), norm, patch, patches,
    # frames, latents, new_tokens, vision_embed.
)
RULES = ACTIVATION_RULES + PARAMETER_RULES  # Activations and the trainable tree (and its optimiser).

# The frozen towers' parameters (vision tower, pretrained LM) by `mesh.frozen`; activations keep
# RULES whatever the policy. "fsdp": as the trainable tree (least memory; every pass all-gathers
# them). "tensor": only the tensor splits, replicated over data and fsdp (no gathers). "replicated":
# nothing listed, whole on every device.
FROZEN_RULES = {
    "fsdp": PARAMETER_RULES,
    "tensor": tuple((name, axis) for name, axis in PARAMETER_RULES if axis != "fsdp"),
    "replicated": (),
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); one size may be -1 to take the rest."""
  devices = jax.devices() if devices is None else devices
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh axes {dict(zip(MESH_AXES, sizes))}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                     f"{len(devices)} are available.")
  axis_types = (AxisType.Auto,) * 3
  try:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:  # An axis is not a product of whole TPU torus axes (e.g. 2 of 4x4x8).
    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def mesh_from_flag(flag: str, name: str = "--mesh", devices=None) -> Mesh:
  """A mesh from a "data,fsdp,tensor" flag (e.g. "1,-1,1": every device on fsdp); errors name
  the flag."""
  try:
    sizes = [int(x) for x in flag.split(",")]
  except ValueError:
    sizes = []
  if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{name}={flag!r}: give the data, fsdp and tensor sizes as three integers "
                     "(>= 1, or -1 for the rest of the devices), e.g. 1,-1,1.")
  return make_mesh(*sizes, devices=devices)


def shardings(boxed_tree: Any, mesh: Mesh, rules=RULES) -> Any:
  """A tree of NamedShardings for a tree whose leaves are nn.Partitioned boxes (e.g. from
  `model.abstract_params`), laid out by `rules` (e.g. FROZEN_RULES[policy] for the frozen towers)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


@contextlib.contextmanager
def active(mesh: Mesh) -> Iterator[None]:
  """Makes `mesh` and RULES current, so the modules' activation constraints take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield


def define_process_flags() -> None:
  """The command-line flags `initialize_processes` reads (defined by the programs that take them)."""
  flags.DEFINE_enum("distributed", "env", ["env", "auto", "off"],
                    "env: use the flags / JAX_* variables if set; auto: let JAX detect the cluster "
                    "(TPU pod, SLURM); off: single process.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")


def _from_env(name: str, flag: str) -> int:
  if name not in os.environ:
    raise ValueError(f"A coordinator address is set but neither {flag} nor {name} is.")
  return int(os.environ[name])


def initialize_processes(mode: str, coordinator: str | None, num_processes: int | None,
                         process_id: int | None) -> None:
  """jax.distributed from the flags, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; `mode="auto"` lets JAX detect a TPU pod or SLURM job; no coordinator: 1 process.
  Settings that do not fit together raise ValueError naming the flag to change."""
  if mode == "off":
    return
  if mode == "auto":
    jax.distributed.initialize()
    return
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not coordinator:
    if (num_processes or 1) > 1:
      raise ValueError(f"--num_processes={num_processes} needs --coordinator_address=host:port "
                       "(process 0's address; or JAX_COORDINATOR_ADDRESS).")
    return
  num = num_processes or _from_env("JAX_NUM_PROCESSES", "--num_processes")
  index = process_id if process_id is not None else _from_env("JAX_PROCESS_ID", "--process_id")
  if not 0 <= index < num:
    raise ValueError(f"--process_id={index} must be in 0..{num - 1} (--num_processes={num}).")
  jax.distributed.initialize(coordinator, num_processes=num, process_id=index)
