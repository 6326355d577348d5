"""Building blocks shared by the vision tower, the LM, the resampler and the gated blocks.

Every parameter is created with logical axis names (see `flamingo_jax/sharding.py` for the table that
maps them to mesh axes); activations are constrained with `constrain`, a no-op outside a mesh.
Shapes: B batch, T query length, S key length, D width, H heads, K key/value heads, Dh head width.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flamingo_jax.config import ExecutionConfig, RopeScalingConfig
from flamingo_jax.models import attention


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
      "relu": jax.nn.relu,
      "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),
      "silu": jax.nn.silu,
  }[name]


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation; does nothing without a mesh and rules."""
  return nn.with_logical_constraint(x, tuple(axes))


class Dense(nn.Module):
  """x [..., *in] @ kernel [*in, *out] (+ bias [*out]) -> [..., *out].

  `axes` names the kernel's dimensions, input ones first (e.g. ("embed", "heads", "kv")); the bias is
  named by the output ones. Initialised LeCun-normal over all input dimensions.
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  num_in: int
  execution: ExecutionConfig
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ex, n_in = self.execution, self.num_in
    shape = x.shape[x.ndim - n_in:] + self.features
    in_axis = tuple(range(n_in))
    out_axis = tuple(range(n_in, len(shape)))
    init = nn.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), shape,
                        jnp.dtype(ex.param_dtype))
    dtype = jnp.dtype(ex.dtype)
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), in_axis), ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             self.axes[n_in:]),
                        self.features, jnp.dtype(ex.param_dtype))
      y = y + bias.astype(dtype)
    return y


def dense(features, axes: tuple[str | None, ...], execution: ExecutionConfig, *, use_bias=False,
          num_in: int = 1, name=None) -> Dense:
  """A Dense over the last `num_in` input dims producing `features` (an int or a tuple)."""
  features = features if isinstance(features, tuple) else (features,)
  return Dense(features, axes, num_in, execution, use_bias=use_bias, name=name)


def layer_norm(execution: ExecutionConfig, eps: float = 1e-5, name=None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=jnp.float32, param_dtype=jnp.dtype(execution.param_dtype),
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), name=name)


def rms_norm(execution: ExecutionConfig, eps: float = 1e-5, name=None) -> nn.RMSNorm:
  return nn.RMSNorm(
      epsilon=eps, dtype=jnp.float32, param_dtype=jnp.dtype(execution.param_dtype),
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), name=name)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScalingConfig) -> jax.Array:
  """Rotary inverse frequencies [head_dim / 2], rescaled as `scaling` says (see RopeScalingConfig)."""
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
  if scaling.kind == "linear":
    return inv_freq / scaling.factor
  if scaling.kind == "llama3":
    wavelength = 2 * jnp.pi / inv_freq
    original = scaling.original_max_positions
    smooth = ((original / wavelength - scaling.low_freq_factor) /
              (scaling.high_freq_factor - scaling.low_freq_factor))
    between = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return jnp.where(wavelength > original / scaling.low_freq_factor, inv_freq / scaling.factor,
                     jnp.where(wavelength < original / scaling.high_freq_factor, inv_freq, between))
  return inv_freq


def rotary(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """LLaMA rotary embedding (halves rotated, not interleaved). x: [B, T, H, Dh], positions: [B, T],
  inv_freq: [Dh / 2] (`rope_frequencies`)."""
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, T, 1, half]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# The decoding caches' layout, heads before slots, so that attention.cached_attention reads them
# without a copy: keys [B, K, S, Dh], values [B, K, Dh, S] (by logical axis).
CACHE_AXES = {"cached_key": ("batch", "act_heads", "length", "act_kv"),
              "cached_value": ("batch", "act_heads", "act_kv", "length")}


def _cache_layout(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """k, v [B, S, K, Dh] -> keys [B, K, S, Dh], values [B, K, Dh, S] (CACHE_AXES), constrained."""
  return (constrain(k.transpose(0, 2, 1, 3), CACHE_AXES["cached_key"]),
          constrain(v.transpose(0, 2, 3, 1), CACHE_AXES["cached_value"]))


class DecodeSlots(NamedTuple):
  """Where a decoding call's tokens go in the self-attention key/value cache (see `Attention`).

  index: [] or [B] int32, the cache slot of the call's first token (its t-th token goes to slot
    index + t): one slot for every row, or one per row (continuous batching: each row of the batch
    is a request at its own point).
  key_mask: [B, S] bool, the cache slots that hold real tokens (False on left padding); S is the
    cache length. A query in slot s attends to the slots <= s that key_mask allows.
  """

  index: jax.Array
  key_mask: jax.Array


class Attention(nn.Module):
  """Multi-head attention with grouped key/value heads.

  Queries come from `x` [B, T, Dq], keys and values from `context` [B, S, Dkv] (self-attention when
  `context` is `x`). Output [B, T, out_features]. `segments` [B, T] (self-attention of packed rows):
  a query attends only to keys of the same segment id.

  Decoding uses the `cache` collection (mutable in the decoding apply, see `decoding.py`):
  * self-attention with `decode` given: this call's keys/values [B, T, K, Dh] (rotary applied) are
    written into `cache/cached_key` [B, K, S, Dh] and `cache/cached_value` [B, K, Dh, S]
    (CACHE_AXES; zeros when absent; S is decode.key_mask's length) at slots
    decode.index..index+T-1, and the queries attend over the whole cache, causally by slot,
    skipping the slots that decode.key_mask rules out (`_update_cache`);
  * `cache_context=True` (cross-attention): the first call (the `context_cache` collection mutable)
    projects `context` and stores its keys and values as `context_cache/cached_key`, `cached_value`
    in the same layout; later calls (the collection read-only) reuse them and ignore `context`. A
    later call may bring G * B query rows (beams, scoring candidates): rows b * G .. b * G + G - 1
    share row b's cached keys/values.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  out_features: int
  execution: ExecutionConfig
  use_bias: bool = False
  qk_norm: bool = False  # RMSNorm on projected queries and keys, per head.
  rope_theta: float | None = None  # Rotary positions on q and k (self-attention only).
  rope_scaling: RopeScalingConfig = RopeScalingConfig()  # Frequency rescaling of the rotary ones.
  qk_norm_type: str = "rms"  # The qk norm: "rms" (RMSNorm) or "layer" (LayerNorm with bias).
  qk_norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, *, positions: jax.Array | None = None,
               mask: jax.Array | None = None, is_causal: bool = False,
               segments: jax.Array | None = None, decode: DecodeSlots | None = None,
               cache_context: bool = False) -> jax.Array:
    ex = self.execution
    q = checkpoint_name(dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), ex,
                              use_bias=self.use_bias, name="query")(x), "query_proj")
    key_proj = dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), ex,
                     use_bias=self.use_bias, name="key")
    value_proj = dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), ex,
                       use_bias=self.use_bias, name="value")
    qk_norm = rms_norm if self.qk_norm_type == "rms" else layer_norm
    key_norm = qk_norm(ex, self.qk_norm_eps, name="key_norm") if self.qk_norm else None
    if self.qk_norm:
      q = qk_norm(ex, self.qk_norm_eps, name="query_norm")(q).astype(q.dtype)
    if self.rope_theta is not None:
      inv_freq = rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)
      q = rotary(q, positions, inv_freq)
    if cache_context and self.has_variable("context_cache", "cached_key"):
      k = self.get_variable("context_cache", "cached_key")
      v = self.get_variable("context_cache", "cached_value")
    else:
      k = checkpoint_name(key_proj(context), "key_proj")
      v = checkpoint_name(value_proj(context), "value_proj")
      if key_norm is not None:
        k = key_norm(k).astype(k.dtype)
      if self.rope_theta is not None:
        k = rotary(k, positions, inv_freq)
      if cache_context:
        k, v = _cache_layout(k, v)
        self.put_variable("context_cache", "cached_key", k)
        self.put_variable("context_cache", "cached_value", v)
    rows, t = q.shape[:2]
    if decode is None and not cache_context:
      q = constrain(q, ("batch", "length", "act_heads", "act_kv"))
      kernel = attention.resolve(ex.attention, attention.current_platform(), ex.dtype)
      out = attention.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                            segments=segments, kernel=kernel)
    else:
      parts = self._update_cache(k, v, decode) if decode is not None else [(k, v, mask)]
      cache_rows = parts[0][0].shape[0]
      groups = rows // cache_rows  # > 1: groups of query rows share one cached context row.
      if groups > 1:
        q = q.reshape(cache_rows, groups * t, *q.shape[2:])
        parts = [(keys, values, m.reshape(cache_rows, groups, *m.shape[1:]).swapaxes(1, 2).reshape(
            cache_rows, m.shape[1], groups * t, m.shape[-1])) for keys, values, m in parts]
      q = constrain(q, ("batch", "length", "act_heads", "act_kv"))
      out = attention.cached_attention(q, parts)
    out = out.reshape(rows, t, *out.shape[2:])
    out = dense(self.out_features, ("heads", "kv", "embed"), ex, use_bias=self.use_bias,
                num_in=2, name="out")(out)
    return checkpoint_name(out, "out_proj")

  def _update_cache(self, k: jax.Array, v: jax.Array, decode: DecodeSlots) -> list:
    """Writes k, v [B, T, K, Dh] at slots decode.index.. of the cache and returns what the queries
    attend to, as attention.cached_attention's parts: the cache as it was (the slots before each
    row's index that decode.key_mask allows; none when the cache is new, at the prefill) and this
    call's T tokens (causal among themselves). The queries never read the written cache, so that
    XLA can write it in place (with decoding.CACHE_COMPILER_OPTIONS; docs/decisions.md)."""
    b, t = k.shape[:2]
    length = decode.key_mask.shape[1]
    index = jnp.broadcast_to(decode.index, (b,))  # [B]: each row's first slot.
    fresh = not self.has_variable("cache", "cached_key")  # The prefill: nothing cached before.
    new = _cache_layout(k, v)
    old = []
    for name, x in zip(CACHE_AXES, new):
      slot_axis = CACHE_AXES[name].index("length")
      var = self.variable("cache", name, jnp.zeros,
                          x.shape[:slot_axis] + (length,) + x.shape[slot_axis + 1:], x.dtype)
      old.append(var.value)
      x = x.astype(var.value.dtype)
      write = jax.vmap(functools.partial(jax.lax.dynamic_update_slice_in_dim, axis=slot_axis - 1))
      var.value = constrain(write(var.value, x, index), CACHE_AXES[name])
    before = (jnp.arange(length) < index[:, None]) & decode.key_mask  # [B, S]
    slots = index[:, None] + jnp.arange(t)  # [B, T]: this call's slots.
    allowed = jnp.take_along_axis(decode.key_mask, jnp.minimum(slots, length - 1), axis=1)
    among = jnp.tril(jnp.ones((t, t), bool)) & allowed[:, None, :]  # [B, T, T]
    return ([] if fresh else [(*old, before[:, None, None, :])]) + [(*new, among[:, None])]


class Mlp(nn.Module):
  """Feed-forward [.., D] -> [.., hidden] -> [.., D]; `gated` is SwiGLU-style (gate * up)."""

  hidden: int
  act: str
  execution: ExecutionConfig
  gated: bool = False
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ex = self.execution
    h = checkpoint_name(dense(self.hidden, ("embed", "mlp"), ex, use_bias=self.use_bias,
                              name="up")(x), "mlp_up")
    if self.gated:
      gate = checkpoint_name(dense(self.hidden, ("embed", "mlp"), ex, use_bias=self.use_bias,
                                   name="gate")(x), "mlp_gate")
      h = activation(self.act)(gate) * h
    else:
      h = activation(self.act)(h)
    h = constrain(h, ("batch", "length", "act_mlp"))
    down = dense(x.shape[-1], ("mlp", "embed"), ex, use_bias=self.use_bias, name="down")(h)
    return checkpoint_name(down, "mlp_down")


# The projection outputs tagged with `checkpoint_name` above (Attention, Mlp).
PROJECTIONS = ("query_proj", "key_proj", "value_proj", "out_proj", "mlp_gate", "mlp_up", "mlp_down")
_save = jax.checkpoint_policies.save_only_these_names
REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    # By kind: every matmul output (attention scores included), or those without batch dimensions.
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # By name (MaxText's idea): every projection, never the [T, S] attention scores.
    "minimal": _save(*PROJECTIONS),
    # Every projection but the MLP's inputs (gate / up, the widest): MaxText's
    # save_dot_except_mlpwi, the Llama-2-70B v5p setting.
    "save_dot_except_mlp_in": _save("query_proj", "key_proj", "value_proj", "out_proj",
                                    "mlp_down"),
    "save_qkv": _save("query_proj", "key_proj", "value_proj"),  # Least memory short of "full".
}


def repeat(block: type[nn.Module], length: int, x: jax.Array, *broadcast: Any,
           execution: ExecutionConfig, name: str, **block_fields) -> jax.Array:
  """Applies `length` independent copies of `block` in sequence: x -> block_{length-1}(...(x)).

  `block(execution=execution, **block_fields)(x, *broadcast)` must return `(x, None)`. With `execution.scan_layers` the
  copies are one `nn.scan` named `name` whose parameters carry a leading `layers` axis [length, ...];
  otherwise they are unrolled as `name_0`, `name_1`, ... (see `params.py` to convert); a decoding
  `cache` / `context_cache` collection is laid out the same way ([length, ...] under `name` when
  scanned). The remat
  policy wraps each copy. Call from inside a compact method: the copies become its children.
  """
  if execution.remat_policy != "none":
    block = nn.remat(block, policy=REMAT_POLICIES[execution.remat_policy],
                     prevent_cse=not execution.scan_layers)
  if execution.scan_layers:
    scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0, "context_cache": 0},
                      split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * len(broadcast), length=length,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(execution=execution, **block_fields, name=name)(x, *broadcast)
    return x
  for i in range(length):
    x, _ = block(execution=execution, **block_fields, name=f"{name}_{i}")(x, *broadcast)
  return x
