"""How parameters and activations are laid out on the device mesh.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism that also shards
parameters and optimiser state) and `tensor` (model parallelism inside matmuls). Modules name their
axes logically (`layers.py`); RULES below maps those names to mesh axes. A logical name not listed is
replicated. The frozen towers may be laid out apart from the trainable tree (`mesh.frozen`:
FROZEN_RULES). Change the layout by editing these tables, not the modules.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import flax.linen as nn
import jax
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


def shardings(boxed_tree: Any, mesh: Mesh, rules=RULES) -> Any:
  """A tree of NamedShardings for a tree whose leaves are nn.Partitioned boxes (e.g. from
  `model.abstract_params`), laid out by `rules` (e.g. FROZEN_RULES[policy] for the frozen towers)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


@contextlib.contextmanager
def active(mesh: Mesh) -> Iterator[None]:
  """Makes `mesh` and RULES current, so the modules' activation constraints take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield
