"""Parameter trees: the frozen / trainable split, merging the parts back, counting, fingerprints.

Split rule (the one place it is defined): a parameter is trainable when its path contains `resampler`,
`xattn`, `extra_embed` or `extra_head`; everything else (vision tower, LM blocks, LM embedding, head and
norms) is frozen. `split` returns two trees of the same nesting, each holding only its own leaves;
`merge` puts them back together.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import traverse_util

Params = dict[str, Any]
TRAINABLE_KEYS = frozenset({"resampler", "xattn", "extra_embed", "extra_head"})


def is_trainable(path: Sequence[str]) -> bool:
  return any(key in TRAINABLE_KEYS for key in path)


def trains_lm(path: Sequence[str]) -> bool:
  """The unfrozen-LM rule (`train.freeze_lm=False`): the Flamingo rule plus every LM parameter."""
  return is_trainable(path) or path[0] == "lm"


def trainable_rule(freeze_lm: bool) -> Callable[[Sequence[str]], bool]:
  """The split rule of a Flamingo model: `is_trainable`, or `trains_lm` when the LM is not frozen."""
  return is_trainable if freeze_lm else trains_lm


def split(params: Params, trainable_if=is_trainable) -> tuple[Params, Params]:
  """params -> (frozen, trainable); `trainable_if(path)` decides (default: the Flamingo rule)."""
  flat = traverse_util.flatten_dict(params)
  frozen = {p: v for p, v in flat.items() if not trainable_if(p)}
  trainable = {p: v for p, v in flat.items() if trainable_if(p)}
  return traverse_util.unflatten_dict(frozen), traverse_util.unflatten_dict(trainable)


def merge(frozen: Params, trainable: Params) -> Params:
  flat_frozen, flat_trainable = traverse_util.flatten_dict(frozen), traverse_util.flatten_dict(trainable)
  overlap = set(flat_frozen) & set(flat_trainable)
  if overlap:
    raise ValueError(f"merge: {len(overlap)} parameters are in both trees, e.g. "
                     f"{'/'.join(sorted(overlap)[0])}.")
  return traverse_util.unflatten_dict({**flat_frozen, **flat_trainable})


def count(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# Values of each leaf a fingerprint reads: evenly spaced over the flattened leaf, so any retraining
# or a different checkpoint changes the hash (every trained weight moves) at a cost independent of
# the model's size.
FINGERPRINT_SAMPLES = 4096


def fingerprint(params: Params) -> str:
  """A short hash of a tree of (possibly sharded, multi-process) arrays: every leaf's path, shape and
  dtype, and FINGERPRINT_SAMPLES of its values at fixed positions, gathered on the devices. Equal
  trees give equal fingerprints on any mesh; the whole tree never moves to the host."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  digest = hashlib.blake2b(digest_size=8)
  if not leaves:
    return digest.hexdigest()
  positions = [np.linspace(0, x.size - 1, min(x.size, FINGERPRINT_SAMPLES)).astype(np.int64)
               for _, x in leaves]
  sharding = getattr(leaves[0][1], "sharding", None)  # numpy leaves have none.
  replicated = (jax.sharding.NamedSharding(sharding.mesh, jax.P())
                if isinstance(sharding, jax.sharding.NamedSharding) else None)
  samples = jax.jit(lambda xs: [x.reshape(-1)[p] for x, p in zip(xs, positions)],
                    out_shardings=replicated)([x for _, x in leaves])
  for (path, x), sample in zip(leaves, samples):
    digest.update(f"{jax.tree_util.keystr(path)}{x.shape}{x.dtype}".encode())
    digest.update(np.asarray(sample.addressable_data(0)).tobytes())
  return digest.hexdigest()
