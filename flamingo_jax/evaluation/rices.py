"""RICES (Retrieval-based In-Context Example Selection): shots = the support examples whose frozen
vision features are most similar to the query's, most similar LAST in the prompt (nearest the query).

Features: the frozen vision tower's output [B, 1, 1, S, D] mean-pooled over its S tokens and L2
normalised -> [B, D]; similarity is the cosine (a dot product of normalised features). Features are
cached on disk as `<cache_dir>/<dataset>-<split>[:<n>]-<data>-<model>.npy`, where `data` fingerprints
the n examples (`data_fingerprint`: keys and images) and `model` the vision config and weights, so a
second evaluation of the same images (another shot count) reads them instead of running the tower
again, and another support set (source, data_dir, split, size or a rebuilt corpus) never does.
With several processes (hosts.py) each computes the features of its share of the examples (whole
batches of BATCH_SIZE), on its own mesh, and every process gets all of them; process 0 alone reads
and writes the cache and sends what it read to the others, so they need not see its disk.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.eval_sets import EvalExample, load_image
from flamingo_jax import sharding
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.evaluation import hosts
from flamingo_jax.models.vision import VisionTransformer
from flamingo_jax.weights import tree as ptree

IMAGE_SAMPLES = 256  # Values of each image that `data_fingerprint` hashes (at fixed positions).
BATCH_SIZE = 64  # Images per run of the vision tower (and the unit processes share the examples in).


def most_similar(query_features: np.ndarray, support_features: np.ndarray, k: int) -> np.ndarray:
  """query [Q, D], support [S, D] (L2-normalised) -> [Q, k] support indices, ordered from the k-th
  most similar to the most similar (most similar last)."""
  if k > len(support_features):
    raise ValueError(f"RICES: {k} shots need at least as many support examples, got "
                     f"{len(support_features)}; raise the task's support_size.")
  similarity = np.asarray(query_features, np.float32) @ np.asarray(support_features, np.float32).T
  best_first = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
  return best_first[:, ::-1]


def model_fingerprint(config: FlamingoConfig, vision_params) -> str:
  """A short hash of the vision config and weights: the cache key of the features they produce."""
  digest = hashlib.blake2b(repr(config.vision).encode(), digest_size=8)
  digest.update(ptree.fingerprint(vision_params).encode())
  return digest.hexdigest()


def data_fingerprint(examples: Sequence[EvalExample]) -> str:
  """A short hash of the examples in order: each one's key, image shape (or encoded length) and
  IMAGE_SAMPLES of its image bytes at fixed positions (as `ptree.fingerprint` samples weights)."""
  digest = hashlib.blake2b(digest_size=8)
  for ex in examples:
    data = np.frombuffer(ex.image, np.uint8) if isinstance(ex.image, bytes) else np.asarray(ex.image)
    flat = data.reshape(-1)
    positions = np.linspace(0, flat.size - 1, min(flat.size, IMAGE_SAMPLES)).astype(np.int64)
    digest.update(f"{ex.key}{data.shape}".encode())
    digest.update(flat[positions].tobytes())
  return digest.hexdigest()


def vision_features(config: FlamingoConfig, vision_params, examples: Sequence[EvalExample],
                    batch_size: int = BATCH_SIZE,
                    mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """[len(examples), D] float32: mean-pooled, L2-normalised frozen vision features, `batch_size`
  examples a run. With `mesh` (vision_params laid out on it, `pretrained.load_trained(workdir,
  mesh)`) each batch is split over its batch devices (data x fsdp) under its activation rules."""
  tower = VisionTransformer(config.vision, config.execution)

  @jax.jit
  def embed(params, images):  # [B, 1, 1, H, W, 3] uint8 -> [B, D]
    features = tower.apply({"params": params}, images)[:, 0, 0].astype(jnp.float32)
    pooled = features.mean(axis=1)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  rows = batch_size  # One shape: one compilation; on a mesh a multiple of its batch devices.
  if mesh is not None:
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = -(-batch_size // devices) * devices
  size, out = config.vision.image_size, []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    images = np.zeros((rows, 1, 1, size, size, 3), np.uint8)
    for i, ex in enumerate(chunk):
      images[i, 0, 0] = load_image(ex, size)
    if mesh is None:
      features = embed(vision_params, images)
    else:
      with sharding.active(mesh):
        features = embed(vision_params, jax.device_put(
            images, jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))))
    out.append(np.asarray(features)[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, config.vision.width), np.float32)


def cached_features(cache_dir: str, dataset: str, split: str, examples: Sequence[EvalExample],
                    model: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
  """Features of `examples` (of `dataset`'s `split`) from
  `<cache_dir>/<dataset>-<split>[:<n>]-<data>-<model>.npy`, or `compute()` written there first.
  With several processes `compute` runs in every one (it may gather) and process 0 writes."""
  key = f"{dataset}-{split}[:{len(examples)}]-{data_fingerprint(examples)}-{model}"
  name = re.sub(r"[^A-Za-z0-9_.]+", "_", key)
  path = os.path.join(cache_dir, f"{name}.npy")
  first = jax.process_index() == 0
  # Process 0's copy or miss, on every process: all of them compute (together) or none.
  cached = hosts.from_first(np.load(path) if first and os.path.exists(path) else None)
  if cached is not None:
    return cached
  features = np.asarray(compute(), np.float32)
  if first:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, features)
    os.replace(tmp, path)  # A half-written cache file is never read.
  return features
