"""Attention kernels: xla against a hand-written reference, splash (Pallas interpret mode) against
xla, the kernel choice per platform, and splash compiled for a TPU slice under a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flamingo_jax import sharding
from flamingo_jax.models import attention, layers


def _qkv(b, t, h, k, dh, s=None, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(b, t, h, dh), (b, s or t, k, dh), (b, s or t, k, dh)]
  return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes]


def _segments(rows):
  """[B, T] segment ids from each row's segment lengths: 1, 2, ... for the examples, 0 for the last
  (the padded tail)."""
  return jnp.asarray([np.repeat([*range(1, len(row)), 0], row) for row in rows], jnp.int32)


def _reference(q, k, v, allowed):
  """Masked softmax attention in float64; allowed: [B, T, S]; each kv head serves H / K query
  heads."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(allowed[:, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", weights, v)


def _xla_and_splash(q, k, v, **kw):
  run = lambda kernel: jax.jit(lambda q, k, v: attention.dot_product_attention(
      q, k, v, kernel=kernel, **kw))(q, k, v)
  return run("xla"), run("splash")


def test_xla_with_segments_and_causal_equals_the_masked_softmax_with_gqa():
  q, k, v = _qkv(b=2, t=12, h=4, k=2, dh=8)
  segments = _segments([[3, 5, 2, 2], [7, 3, 2]])  # 3 and 2 segments, then a padded tail (id 0).
  out = attention.dot_product_attention(q, k, v, is_causal=True, segments=segments, kernel="xla")
  seg = np.asarray(segments)
  allowed = (seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((12, 12), bool))
  np.testing.assert_allclose(out, _reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_xla_combines_a_mask_with_the_segments():
  q, k, v = _qkv(b=1, t=6, h=2, k=2, dh=8)
  segments = _segments([[4, 2]])
  key_mask = jnp.asarray([[True, False, True, True, True, True]])[:, None, None, :]  # [B, 1, 1, S]
  out = attention.dot_product_attention(q, k, v, mask=key_mask, segments=segments)
  seg = np.asarray(segments)
  allowed = (seg[:, :, None] == seg[:, None, :]) & np.asarray(key_mask)[:, 0]
  np.testing.assert_allclose(out, _reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_cached_attention_equals_the_masked_softmax_with_gqa():
  q, k, v = _qkv(b=2, t=3, h=4, k=2, dh=8, s=10)
  allowed = np.random.default_rng(1).random((2, 3, 10)) < 0.6
  allowed[:, :, 0] = True  # Every query sees at least one key.
  keys, values = layers._cache_layout(k, v)
  parts = [(keys[:, :, :7], values[..., :7], jnp.asarray(allowed)[:, None, :, :7]),
           (keys[:, :, 7:], values[..., 7:], jnp.asarray(allowed)[:, None, :, 7:])]
  out = attention.cached_attention(q, parts)  # One softmax over the keys of both parts.
  np.testing.assert_allclose(out, _reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_cached_attention_takes_a_mask_per_head():
  q, k, v = _qkv(b=1, t=2, h=4, k=2, dh=8, s=6)
  mask = jnp.asarray(np.random.default_rng(2).random((1, 4, 2, 6)) < 0.5).at[..., 0].set(True)
  out = attention.cached_attention(q, [(*layers._cache_layout(k, v), mask)])
  np.testing.assert_allclose(out, attention.dot_product_attention(q, k, v, mask=mask), atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("t, h, k, is_causal, segments", [
    pytest.param(200, 4, 2, True, [[60, 100, 40], [150, 30, 20]], id="lm_packed_gqa_padded"),
    pytest.param(128, 2, 2, True, None, id="causal"),
    pytest.param(200, 2, 1, False, None, id="vision_unmasked_mqa_padded"),  # Padded to 256.
])
def test_splash_equals_xla(t, h, k, is_causal, segments):
  q, k, v = _qkv(b=2, t=t, h=h, k=k, dh=64)
  segments = None if segments is None else _segments(segments)
  xla, splash = _xla_and_splash(q, k, v, is_causal=is_causal, segments=segments)
  np.testing.assert_allclose(splash, xla, atol=1e-5, rtol=1e-5)


def test_splash_gradients_equal_xla():
  q, k, v = _qkv(b=1, t=200, h=4, k=2, dh=64, seed=1)
  segments = _segments([[90, 80, 30]])
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

  def grads(kernel):
    loss = lambda q, k, v: jnp.sum(cotangent * attention.dot_product_attention(
        q, k, v, is_causal=True, segments=segments, kernel=kernel))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for want, got in zip(grads("xla"), grads("splash")):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_splash_with_a_mask_runs_xla():
  q, k, v = _qkv(b=1, t=4, h=2, k=2, dh=8, s=6)
  mask = jnp.asarray(np.random.default_rng(3).random((1, 1, 4, 6)) < 0.7).at[..., 0].set(True)
  xla, splash = _xla_and_splash(q, k, v, mask=mask)
  np.testing.assert_array_equal(splash, xla)


def test_splash_under_a_cpu_mesh_splits_batch_and_heads():
  q, k, v = _qkv(b=4, t=128, h=4, k=2, dh=64, seed=4)
  segments = _segments([[50, 78]] * 4)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
  with sharding.active(mesh):
    xla, splash = _xla_and_splash(q, k, v, is_causal=True, segments=segments)
  np.testing.assert_allclose(splash, xla, atol=1e-5, rtol=1e-5)


def test_causal_and_segments_need_self_attention():
  q, k, v = _qkv(b=1, t=4, h=2, k=2, dh=8, s=6)
  with pytest.raises(ValueError, match="self-attention; queries have length 4 and keys 6"):
    attention.dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("requested, platform, dtype, kernel", [
    ("auto", "tpu", jnp.bfloat16, "splash"), ("auto", "tpu", jnp.float32, "splash"),
    ("auto", "gpu", jnp.bfloat16, "cudnn"), ("auto", "gpu", jnp.float16, "cudnn"),
    ("auto", "gpu", jnp.float32, "xla"), ("auto", "cpu", jnp.bfloat16, "xla"),
    ("xla", "tpu", jnp.float32, "xla"), ("xla", "gpu", jnp.bfloat16, "xla"),
    ("xla", "cpu", jnp.float32, "xla"), ("splash", "tpu", jnp.bfloat16, "splash"),
    ("splash", "cpu", jnp.float32, "splash"), ("cudnn", "gpu", jnp.bfloat16, "cudnn"),
])
def test_resolve_picks_the_kernel(requested, platform, dtype, kernel):
  assert attention.resolve(requested, platform, dtype) == kernel


@pytest.mark.parametrize("requested, platform, dtype, message", [
    ("splash", "gpu", jnp.bfloat16, r"attention=splash is a TPU .* set it to cudnn"),
    ("cudnn", "cpu", jnp.bfloat16, r"attention=cudnn needs NVIDIA GPUs and the devices are cpu"),
    ("cudnn", "tpu", jnp.bfloat16, r"attention=cudnn needs NVIDIA GPUs and the devices are tpu"),
    ("cudnn", "gpu", jnp.float32, r"compute dtype is float32: set model.execution.dtype=bfloat16"),
    ("flash", "gpu", jnp.bfloat16, r"attention='flash': use auto, xla, cudnn, splash"),
])
def test_resolve_rejects_what_the_platform_cannot_run(requested, platform, dtype, message):
  with pytest.raises(ValueError, match=message):
    attention.resolve(requested, platform, dtype)


@pytest.mark.parametrize("tensor, kv_heads", [(1, 2), (2, 2), (2, 1)])  # (2, 1): kv heads repeated.
def test_splash_compiles_to_a_mosaic_kernel_for_a_tpu_slice(tensor, kv_heads):
  pytest.importorskip("libtpu")
  from flamingo_jax.training.aot import parse_topology, topology_devices
  mesh = sharding.make_mesh(data=2, fsdp=2 // tensor, tensor=tensor,
                            devices=topology_devices(parse_topology("v5e:2x2")))
  heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  kv_spec = P(("data", "fsdp"), None, "tensor" if kv_heads % tensor == 0 else None, None)
  q = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16, sharding=heads)
  kv = jax.ShapeDtypeStruct((4, 256, kv_heads, 128), jnp.bfloat16,
                            sharding=NamedSharding(mesh, kv_spec))
  segments = jax.ShapeDtypeStruct((4, 256), jnp.int32,
                                  sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))

  def loss(q, k, v, segments):
    out = attention.dot_product_attention(q, k, v, is_causal=True, segments=segments,
                                          kernel="splash")
    return out.astype(jnp.float32).sum()

  with sharding.active(mesh):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, segments).compile()
  assert compiled.as_text().count("tpu_custom_call") == 3  # Forward, dq and dkv kernels.
