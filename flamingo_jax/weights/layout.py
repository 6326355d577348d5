"""Layer layouts of a parameter tree: scanned stacks <-> unrolled modules, and moving LM layers
between gated-block placements (a text-only LM is the placement with no gated blocks).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.lm import Segment, layer_plan
from flamingo_jax.weights.tree import Params


def lm_layers(lm: Params, plan: Sequence[Segment]) -> tuple[list[Params], list[Params]]:
  """Scanned LM params laid out by `plan` -> (per-layer LM blocks [L], per-gated-block trees [K])."""
  blocks, xattns = [], []
  for k, segment in enumerate(plan):
    for u in range(segment.num_units):
      unit = jax.tree.map(lambda a: a[u], lm[f"segment_{k}"])
      if segment.has_xattn:
        xattns.append(unit["xattn"])
      blocks.extend(unit[f"block_{j}"] for j in range(segment.blocks_per_unit))
  return blocks, xattns


def with_lm_layers(lm: Params, blocks: Sequence[Params], xattns: Sequence[Params] | None,
                   plan: Sequence[Segment]) -> Params:
  """Scanned LM params whose layers are `blocks` and `xattns` laid out by `plan` (the rest of `lm`,
  embeddings, norms and heads, is kept). With `lm_layers` this moves a text-only LM's weights into
  any gated-block placement, and back. `xattns=None` builds the frozen part only (no gated blocks)."""
  want_blocks = sum(s.num_units * s.blocks_per_unit for s in plan)
  want_xattns = sum(s.num_units for s in plan if s.has_xattn) if xattns is not None else 0
  if (len(blocks), len(xattns or ())) != (want_blocks, want_xattns):
    raise ValueError(f"The layer plan needs {want_blocks} LM blocks and {want_xattns} gated blocks "
                     f"but got {len(blocks)} and {len(xattns)}; check model.lm.num_layers and "
                     "model.xattn.every / offset against the checkpoint.")
  out = {name: v for name, v in lm.items() if not name.startswith("segment_")}
  next_block, next_xattn = iter(blocks), iter(xattns or ())
  for k, segment in enumerate(plan):
    units = []
    for _ in range(segment.num_units):
      unit = {f"block_{j}": next(next_block) for j in range(segment.blocks_per_unit)}
      if segment.has_xattn and xattns is not None:
        unit["xattn"] = next(next_xattn)
      units.append(unit)
    out[f"segment_{k}"] = jax.tree.map(lambda *a: jnp.stack(a), *units)
  return out


def stacks(config: FlamingoConfig) -> list[tuple[tuple[str, ...], int]]:
  """(path, length) of every `layers.repeat` stack in the Flamingo parameter tree."""
  out = [(("vision", "blocks"), config.vision.num_layers),
         (("resampler", "blocks"), config.resampler.num_layers)]
  plan = layer_plan(config.lm.num_layers, config.xattn)
  out += [(("lm", f"segment_{k}"), s.num_units) for k, s in enumerate(plan)]
  return out


def xattn_paths(config: FlamingoConfig) -> list[tuple[tuple[str, str], bool]]:
  """Where the gated blocks sit in an LM parameter tree, in layer order: (path, stacked), stacked
  when the path holds every unit of a scanned segment ([units, ...] leaves)."""
  out = []
  for k, segment in enumerate(layer_plan(config.lm.num_layers, config.xattn)):
    if not segment.has_xattn:
      continue
    if config.execution.scan_layers:
      out.append(((f"segment_{k}", "xattn"), True))
    else:
      out += [((f"segment_{k}_{u}", "xattn"), False) for u in range(segment.num_units)]
  return out


def export_stacks(name: str, config: FlamingoConfig) -> list[tuple[tuple[str, ...], int]]:
  """The layer stacks of an export (`lm`: a text-only LM, `vision`: a ViT) for `relayout`."""
  return {"lm": [(("segment_0",), config.lm.num_layers)],
          "vision": [(("blocks",), config.vision.num_layers)]}[name]


def relayout(params: Params, stack_list: Sequence[tuple[tuple[str, ...], int]],
             scanned: bool) -> Params:
  """Converts params between the scanned layout (each stack under its name with a leading [length]
  axis) and the unrolled one (`name_0` ... `name_{length-1}`); `scanned` is the one wanted.
  `stack_list` is `stacks(config)` for a Flamingo tree, [(("segment_0",), L)] for a text-only LM."""
  params = jax.tree.map(lambda a: a, params)  # A copy whose dicts we may rebuild.
  for (*parents, name), length in stack_list:
    parent = params
    for key in parents:
      parent = parent.get(key, {})  # A partial tree (e.g. the frozen part) may lack a stack.
    if scanned and f"{name}_0" in parent:
      parent[name] = jax.tree.map(lambda *a: jnp.stack(a),
                                  *[parent.pop(f"{name}_{i}") for i in range(length)])
    elif not scanned and name in parent:
      stacked = parent.pop(name)
      parent.update({f"{name}_{i}": jax.tree.map(lambda a: a[i], stacked) for i in range(length)})
  return params
