"""Packing and the one-LM-pass update: packed rows keep every example's computation, and the joint
pass gives the gradient of the paper's per-dataset accumulation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.packing import pack_rows, packing_counts
from data_pipelines.synthetic import SyntheticMixture
from flamingo_jax.training.setup import build_setup
from flamingo_jax.training.step import make_grads_fn
from flamingo_jax.weights import tree as ptree
from tests.configs import train_small


def test_pack_rows_places_examples_end_to_end_with_their_own_images():
  tokens = np.array([[7, 1, 2, 0], [7, 3, 7, 4], [1, 2, 3, 0], [7, 5, 6, 0]], np.int32)
  phi = np.array([[1, 1, 1, 1], [1, 1, 2, 2], [0, 0, 0, 0], [1, 1, 1, 1]], np.int32)
  batch = {"tokens": tokens, "labels": tokens + 100, "loss_mask": (tokens > 0).astype(np.float32),
           "phi": phi, "image_mask": np.array([[1, 0], [1, 1], [0, 0], [1, 0]], bool),
           "images": np.arange(4 * 2, dtype=np.uint8).reshape(4, 2, 1, 1, 1, 1),
           "counts": np.ones((4, 3), np.int64)}
  packed = pack_rows(batch, 2)
  np.testing.assert_array_equal(packed["tokens"], [[7, 1, 2, 0, 7, 3, 7, 4], [1, 2, 3, 0, 7, 5, 6, 0]])
  np.testing.assert_array_equal(packed["labels"], packed["tokens"] + 100)
  np.testing.assert_array_equal(packed["phi"], [[1, 1, 1, 1, 3, 3, 4, 4], [0, 0, 0, 0, 3, 3, 3, 3]])
  np.testing.assert_array_equal(packed["segments"], [[1, 1, 1, 1, 2, 2, 2, 2]] * 2)
  np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 3, 0, 1, 2, 3]] * 2)
  np.testing.assert_array_equal(packed["images"][:, :, 0, 0, 0, 0], [[0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(packed["image_mask"], [[1, 0, 1, 1], [0, 0, 1, 0]])
  assert packed["counts"] is batch["counts"]
  assert packing_counts(packed) == {"packed_rows": 2, "packed_examples": 4,
                                    "packed_loss_tokens": 13, "packed_tokens": 16}


def test_rows_longer_than_their_examples_end_in_padding_that_no_example_sees():
  batch = {"tokens": np.array([[7, 1, 2], [7, 3, 4]], np.int32), "phi": np.ones((2, 3), np.int32),
           "labels": np.full((2, 3), 9, np.int32), "loss_mask": np.ones((2, 3), np.float32),
           "image_mask": np.ones((2, 1), bool), "images": np.ones((2, 1, 1, 1, 1, 1), np.uint8)}
  packed = pack_rows(batch, 2, row_tokens=8)
  np.testing.assert_array_equal(packed["tokens"], [[7, 1, 2, 7, 3, 4, 0, 0]])
  np.testing.assert_array_equal(packed["segments"], [[1, 1, 1, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 0, 1, 2, 0, 0]])
  np.testing.assert_array_equal(packed["phi"], [[1, 1, 1, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(packed["loss_mask"], [[1, 1, 1, 1, 1, 1, 0, 0]])
  assert packed["images"].shape == (1, 2, 1, 1, 1, 1)
  assert packing_counts(packed) == {"packed_rows": 1, "packed_examples": 2,
                                    "packed_loss_tokens": 6, "packed_tokens": 8}
  with pytest.raises(ValueError, match="cannot hold 2 examples of 3"):
    pack_rows(batch, 2, row_tokens=5)


def _grads(config, batches):
  """((total, losses), grads) of the config's update from seed-0 parameters with the gates at 0.5
  (so that every trainable part gets a gradient)."""
  setup = build_setup(config, jax.devices()[:1])
  params = nn.meta.unbox(setup.task.model.init(jax.random.key(0), *setup.task.init_inputs))
  frozen, trainable = ptree.split(params["params"])
  trainable = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 if str(path[-1].key).endswith("_gate") else x, trainable)
  loss_weights = {n: s.loss_weight for n, s in config.data.selected().items()}
  grads = make_grads_fn(setup.task, loss_weights, micro_batches=config.train.micro_batches,
                        lm_pass=config.train.lm_pass)
  return jax.jit(grads)(trainable, frozen, batches)


def _batches(config):
  mixture = SyntheticMixture(config.data, image_size=config.model.vision.image_size,
                             image_token_id=config.model.image_token_id,
                             eoc_token_id=config.model.eoc_token_id)
  return jax.tree.map(jnp.asarray, next(mixture))


def test_one_packed_pass_equals_the_three_pass_gradient():
  """Micro-batched (2): each micro-batch is one joint pass, every dataset's token count shared."""
  packed = train_small.config("packed", **{"train.micro_batches": 2})
  unpacked = packed.replace({"train.lm_pass": "per_dataset", "data.datasets.pairs.pack": 1,
                             "data.datasets.video.pack": 1})
  (total_a, losses_a), grads_a = _grads(packed, _batches(packed))
  (total_b, losses_b), grads_b = _grads(unpacked, _batches(unpacked))
  assert sorted(losses_a) == ["interleaved", "pairs", "video"]
  for name in losses_a:
    np.testing.assert_allclose(losses_a[name], losses_b[name], rtol=1e-6)
  np.testing.assert_allclose(total_a, total_b, rtol=1e-6)
  flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
  assert len(flat_a) == len(flat_b) and all(np.abs(g).max() > 0 for g in flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # execution.loss_chunk (7: does not divide the rows' 16 tokens) changes memory, not the update.
  (total_c, losses_c), grads_c = _grads(packed.replace({"model.execution.loss_chunk": 7}),
                                        _batches(packed))
  np.testing.assert_allclose(total_c, total_a, rtol=1e-6)
  for a, c in zip(flat_a, jax.tree.leaves(grads_c)):
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)


def test_padded_rows_give_the_per_dataset_gradient():
  """Video at 6 tokens a clip, 2 clips to a 16-token row (4 tokens of padding): the joint pass's
  loss and gradient are the three-pass ones, and the model FLOPs count 6 tokens a clip."""
  video = {"data.datasets.video.seq_len": 6}
  padded = train_small.config("packed", **video, **{"data.datasets.video.row_len": 16})
  unpacked = padded.replace({"train.lm_pass": "per_dataset", "data.datasets.pairs.pack": 1,
                             "data.datasets.video.pack": 1, "data.datasets.video.row_len": 0})
  batches = _batches(padded)
  assert batches["video"]["tokens"].shape == (8, 16)
  (total_a, losses_a), grads_a = _grads(padded, batches)
  (total_b, losses_b), grads_b = _grads(unpacked, _batches(unpacked))
  for name in losses_a:
    np.testing.assert_allclose(losses_a[name], losses_b[name], rtol=1e-6)
  np.testing.assert_allclose(total_a, total_b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  setup = build_setup(padded, jax.devices()[:1])
  model = setup.model_config
  assert (setup.task.step_flops(model, {"video": batches["video"]}, 1, padded.data.packs())
          == setup.task.step_flops(model, {"video": _batches(unpacked)["video"]}, 1))


def test_rows_that_cannot_split_over_the_devices_name_the_dataset():
  config = train_small.config("packed", **{"data.datasets.video.batch_size": 8})
  with pytest.raises(ValueError, match=r"data\.datasets\.video\.batch_size=8: gives 4 rows "
                     r"\(batch_size / pack=2\) that cannot be split over mesh\.data x mesh\.fsdp "
                     r"= 8 devices"):
    build_setup(config)
