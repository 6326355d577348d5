"""The paper's stages share the trainer: their exports load as the Flamingo stage's frozen towers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.training import train as T
from flamingo_jax.training.setup import build_setup
from flamingo_jax.training.tasks import make_task
from flamingo_jax.weights import pretrained
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.store import load_params
from tests.configs import train_small


def test_contrastive_and_lm_exports_become_the_frozen_towers(tmp_path):
  base = train_small.config("two", **{"train.num_steps": 2})
  vision_stage = base.replace({"task": "contrastive", "data.datasets": {"pairs": dict(
      batch_size=8, seq_len=9, max_images=1, num_frames=1, loss_weight=1.0)}})
  T.train(vision_stage, str(tmp_path / "vision"))
  T.train(base.replace({"task": "lm"}), str(tmp_path / "lm"))

  flamingo_stage = base.replace({
      "init.vision_checkpoint": str(tmp_path / "vision" / "export" / "vision"),
      "init.lm_checkpoint": str(tmp_path / "lm" / "export" / "lm")})
  setup = build_setup(flamingo_stage)
  frozen, trainable = pretrained.initial_params(flamingo_stage, setup.parts)
  config = setup.model_config

  # The vision tower is the contrastive stage's, bit for bit.
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa
  exported_vision = load_params(flamingo_stage.init.vision_checkpoint, abstract(frozen["vision"]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen["vision"]),
               jax.device_get(exported_vision))

  # The LM, regrouped around the gated blocks, computes what the pretrained text LM computes.
  lm_task = make_task("lm", config)
  lm_params = load_params(flamingo_stage.init.lm_checkpoint, jax.eval_shape(
      lambda: nn.meta.unbox(lm_task.model.init(jax.random.key(0), *lm_task.init_inputs)["params"])))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.lm.vocab_size, (2, 12)), jnp.int32)
  images = jnp.zeros((2, 1, 1, config.vision.image_size, config.vision.image_size, 3), jnp.uint8)
  phi = jnp.zeros_like(tokens)  # No image: the gated blocks add exactly nothing.
  params = ptree.merge(jax.device_get(frozen), jax.device_get(trainable))
  ours = jax.jit(Flamingo(config).apply)({"params": params}, tokens, images, phi)
  theirs = jax.jit(lm_task.model.apply)({"params": lm_params}, tokens)
  v = config.lm.vocab_size  # The new-token columns differ: Flamingo trains its own rows.
  np.testing.assert_allclose(ours[..., :v], theirs[..., :v], atol=1e-5, rtol=1e-5)
