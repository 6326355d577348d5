"""Attention kernels: `dot_product_attention` runs softmax attention with one of three kernels.

* xla: `jax.nn.dot_product_attention(implementation="xla")`: einsums and a float32 softmax over a
  materialised [B, H, T, S] score matrix; runs everywhere and takes any mask.
* cudnn: cuDNN's fused flash attention (`implementation="cudnn"`), NVIDIA GPUs, bfloat16 / float16
  only. Causal masking is native (masked blocks are skipped); segment ids and `mask` become a
  [B, 1 or H, T, S] additive bias (cuDNN's packed-sequence layout is not reachable from jax.nn and
  needs Hopper).
* splash: the Pallas TPU splash-attention kernel (block-sparse flash attention). Causal masking is a
  static block mask, segment ids are the kernel's SegmentIds. It has no arbitrary mask: a call with
  `mask` (cross-attention to image tokens, decoding) runs xla instead. Off TPU it runs in Pallas'
  interpret mode (slow; tests only). Specifics:
  - layout: the kernel takes one example head-major ([H, T, Dh]); inputs are transposed and the
    kernel vmapped over the batch;
  - scaling: the kernel computes q.k without 1/sqrt(Dh), so q is scaled first (in q's dtype);
  - grouped-query attention: the multi-head kernel maps query head h to kv head h // (H / K)
    itself, so k and v keep their K heads (no copies); they are repeated to H heads only when the
    mesh splits heads over more devices than K;
  - length: T and S are padded to a multiple of 128 (the kernel's smallest block; blocks are the
    largest of 512 / 256 / 128 dividing the padded length). Padded positions get a segment id no
    real position has, so no real query attends to a padded key; padded query rows are dropped;
  - SPMD: with a mesh active (`jax.set_mesh`, e.g. `sharding.active`), the kernel runs inside
    `jax.shard_map`, batch and heads split over the mesh axes the active logical rules give
    ("batch", "act_heads"); B and H must divide by those axes' sizes. The platform (TPU, or else
    interpret mode) is the active mesh's, else `jax.default_backend()`.
`resolve` maps ExecutionConfig.attention ("auto" or a kernel) to the kernel for the devices.
Shapes: B batch, T query length, S key length, H query heads, K key/value heads, Dh head width.
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

KERNELS = ("xla", "cudnn", "splash")
HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
SPLASH_BLOCKS = (512, 256, 128)  # Tile sizes tried, largest first; lengths are padded to the last.


def resolve(requested: str, platform: str, dtype) -> str:
  """ExecutionConfig.attention ("auto" | "xla" | "cudnn" | "splash"), the devices' platform ("tpu",
  "gpu", "cpu") and the compute dtype -> the kernel to use (one of KERNELS).

  auto: splash on tpu, cudnn on gpu for bfloat16 / float16 (xla for float32), xla elsewhere. An
  explicit kernel the platform cannot run is a ValueError; splash on cpu runs in interpret mode.
  """
  half = jnp.dtype(dtype) in HALF_DTYPES
  if requested == "auto":
    return {"tpu": "splash", "gpu": "cudnn" if half else "xla"}.get(platform, "xla")
  if requested not in KERNELS:
    raise ValueError(f"model.execution.attention={requested!r}: use auto, {', '.join(KERNELS)}.")
  if requested == "splash" and platform == "gpu":
    raise ValueError("model.execution.attention=splash is a TPU (Pallas Mosaic) kernel and the "
                     "devices are GPUs: set it to cudnn (bfloat16/float16), xla or auto.")
  if requested == "cudnn" and platform != "gpu":
    raise ValueError(f"model.execution.attention=cudnn needs NVIDIA GPUs and the devices are "
                     f"{platform}: set it to auto, xla or (on tpu) splash.")
  if requested == "cudnn" and not half:
    raise ValueError(f"model.execution.attention=cudnn runs bfloat16/float16 only and the "
                     f"compute dtype is {jnp.dtype(dtype)}: set model.execution.dtype=bfloat16, "
                     "or attention to xla or auto.")
  return requested


def current_platform() -> str:
  """The platform being compiled for: the active mesh's devices' ("tpu" when compiling for a TPU
  slice from a CPU host), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device:
    return mesh.abstract_device.platform
  return jax.default_backend()


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: jax.Array | None = None, is_causal: bool = False,
                          segments: jax.Array | None = None, kernel: str = "xla") -> jax.Array:
  """Softmax(q k^T / sqrt(Dh)) v with `kernel` (one of KERNELS; see the module docstring).

  q [B, T, H, Dh], k and v [B, S, K, Dh] (K divides H: grouped-query attention) -> [B, T, H, Dh] in
  q.dtype. mask: [B, 1 or H, T or 1, S] bool (True: may attend) or None. is_causal: a query attends
  to keys at positions <= its own (self-attention, T == S). segments: [B, T] int or None
  (self-attention): a query attends only to keys with its segment id (packed rows), and'ed with
  is_causal. kernel="splash" with `mask` runs xla.
  """
  if kernel not in KERNELS:
    raise ValueError(f"Attention kernel {kernel!r}: use one of {KERNELS} (see attention.resolve).")
  if (is_causal or segments is not None) and q.shape[1] != k.shape[1]:
    raise ValueError(f"is_causal and segments are for self-attention; queries have length "
                     f"{q.shape[1]} and keys {k.shape[1]}.")
  if kernel == "splash" and mask is None:
    return _splash(q, k, v, is_causal, segments)
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  if mask is not None:  # cuDNN takes only a full [B, H', T, S] mask.
    mask = jnp.broadcast_to(mask, (b, mask.shape[1], t, s))
  if segments is not None:
    same = segments[:, None, :, None] == segments[:, None, None, :]  # [B, 1, T, T]
    mask = same if mask is None else mask & same
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      implementation="cudnn" if kernel == "cudnn" else "xla")


def cached_attention(q: jax.Array, parts) -> jax.Array:
  """Softmax(q k^T / sqrt(Dh)) v over the keys of several parts (a decoding cache and the new
  tokens), laid out so that XLA's CPU products read them without transposing them.

  q [B, T, H, Dh]; parts: a sequence of (keys [B, K, S_i, Dh], values [B, K, Dh, S_i], mask
  [B, 1 or H, 1 or T, S_i] bool), K dividing H (grouped-query attention); one softmax over all
  their keys -> [B, T, H, Dh] in q.dtype. Scores and softmax in float32. In this layout XLA's CPU
  products read the keys and values as they lie: with the [B, S, K, Dh] one it transposed every
  layer's keys and values at every step (about a third of a `bench` decode step). Decoding passes
  the cache as it was and the new tokens as two parts: a product reading the cache just written
  made XLA copy the cache at every step; this way it writes it in place (docs/decisions.md).
  """
  b, t, h, dh = q.shape
  kv_heads = parts[0][0].shape[1]
  groups = h // kv_heads
  q = q.reshape(b, t, kv_heads, groups, dh) * jnp.asarray(dh ** -0.5, q.dtype)

  def per_group(mask):  # -> [B, K or 1, G or 1, T or 1, S_i]
    if mask.shape[1] == h > 1:
      return mask.reshape(b, kv_heads, groups, *mask.shape[2:])
    return mask[:, :, None]

  scores = jnp.concatenate([jnp.where(per_group(mask), jnp.einsum(
      "btkgd,bksd->bkgts", q, keys, preferred_element_type=jnp.float32),
      jnp.finfo(jnp.float32).min) for keys, _, mask in parts], axis=-1)
  probs = jax.nn.softmax(scores, axis=-1)
  ends = list(itertools.accumulate(keys.shape[2] for keys, _, _ in parts))
  out = sum(jnp.einsum("bkgts,bkds->btkgd", p.astype(values.dtype), values)
            for p, (_, values, _) in zip(jnp.split(probs, ends[:-1], axis=-1), parts))
  return out.reshape(b, t, h, dh).astype(q.dtype)


def _splash(q, k, v, is_causal, segments):
  """The splash kernel on [B, T, H, Dh] / [B, S, K, Dh] inputs (see the module docstring)."""
  b, t, h, dh = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  t_pad, s_pad = _round_up(t, SPLASH_BLOCKS[-1]), _round_up(s, SPLASH_BLOCKS[-1])
  q_ids = kv_ids = None
  if segments is not None or (t_pad, s_pad) != (t, s):
    q_ids = jnp.zeros((b, t), jnp.int32) if segments is None else segments.astype(jnp.int32)
    kv_ids = jnp.zeros((b, s), jnp.int32) if segments is None else q_ids
    pad_id = jnp.maximum(q_ids.max(axis=1, keepdims=True), kv_ids.max(axis=1, keepdims=True)) + 1
    q_ids, kv_ids = _pad_ids(q_ids, t_pad, pad_id), _pad_ids(kv_ids, s_pad, pad_id)

  mesh = jax.sharding.get_abstract_mesh()
  platform = current_platform()
  batch_axes, head_axes = ((), ()) if mesh.empty else _mesh_axes(mesh)
  batch_shards, head_shards = (math.prod(mesh.shape[a] for a in axes)
                               for axes in (batch_axes, head_axes))
  if b % batch_shards or h % head_shards:
    raise ValueError(f"Splash attention splits the batch ({b}) over mesh axes {batch_axes} "
                     f"({batch_shards} devices) and the heads ({h}) over {head_axes} "
                     f"({head_shards}): make them divisible, or set model.execution.attention=xla.")
  if kv_heads % head_shards:  # Each device's query heads need their own kv heads.
    k, v = (jnp.repeat(x, h // kv_heads, axis=2) for x in (k, v))

  def head_major(x, length):  # [B, L, N, Dh] -> [B, N, L_pad, Dh]
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  args = [head_major(q * dh ** -0.5, t_pad), head_major(k, s_pad), head_major(v, s_pad)]
  heads_spec = P(batch_axes or None, head_axes or None, None, None)
  specs = [heads_spec] * 3
  if q_ids is not None:
    args += [q_ids, kv_ids]
    specs += [P(batch_axes or None, None)] * 2

  def run(q, k, v, *ids):  # One device's examples and heads: [b, h, T_pad, Dh].
    base = splash.CausalMask((t_pad, s_pad)) if is_causal else splash.FullMask((t_pad, s_pad))
    bq, bkv = _block(t_pad), _block(s_pad)
    blocks = splash.BlockSizes(bq, bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                               block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    attend = splash.make_splash_mha(splash.MultiHeadMask((base,) * q.shape[1]),
                                    block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    interpret=platform != "tpu")
    if not ids:
      return jax.vmap(attend)(q, k, v)
    return jax.vmap(lambda q, k, v, q_ids, kv_ids: attend(
        q, k, v, segment_ids=splash.SegmentIds(q_ids, kv_ids)))(q, k, v, *ids)

  if not mesh.empty:
    run = jax.shard_map(run, in_specs=tuple(specs), out_specs=heads_spec, check_vma=False)
  out = run(*args)  # [B, H, T_pad, Dh]
  return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _mesh_axes(mesh) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The active mesh axes that the logical rules give to the batch and to the attention heads."""
  spec = nn.logical_to_mesh_axes(("batch", None, "act_heads", None))

  def names(entry):
    entry = entry if isinstance(entry, tuple) else (entry,)
    return tuple(a for a in entry if a in mesh.axis_names)

  return names(spec[0]), names(spec[2])


def _pad_ids(ids: jax.Array, length: int, pad_id: jax.Array) -> jax.Array:
  """ids [B, L], pad_id [B, 1] -> [B, length]: ids then pad_id."""
  return jnp.concatenate([ids, jnp.broadcast_to(pad_id, (ids.shape[0], length - ids.shape[1]))], 1)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block(length: int) -> int:
  return next(b for b in SPLASH_BLOCKS if length % b == 0)
