"""Small models and inputs the tests share: the `tiny` preset with overrides, random batches,
initialised params / jitted forwards cached per config (each compiles once per test session), and a
trained run's workdir built from them."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

from experiments import flamingo as flamingo_presets
from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.models import masking
from flamingo_jax.models.flamingo import Flamingo, example_inputs
from flamingo_jax.training.optimizer import make_optimizer
from flamingo_jax.training.step import TrainState
from flamingo_jax.weights import pretrained
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.store import Checkpointer


def tiny_config(**overrides) -> FlamingoConfig:
  """The `tiny` preset with flattened overrides, e.g. tiny_config(**{"xattn.every": 3})."""
  config = flamingo_presets.get_config("tiny").model
  config.update_from_flattened_dict(overrides)
  return FlamingoConfig.from_dict(config)


def make_batch(config: FlamingoConfig, batch=2, length=16, num_images=2, num_frames=1,
               image_positions=(3, 9), seed=0):
  """Random tokens with `<image>` at `image_positions`, random images, and phi."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.lm.vocab_size, (batch, length))
  tokens[:, list(image_positions)] = config.image_token_id
  tokens[:, -1] = config.eoc_token_id
  size = config.vision.image_size
  images = rng.integers(0, 256, (batch, num_images, num_frames, size, size, 3), dtype=np.uint8)
  tokens = jnp.asarray(tokens, jnp.int32)
  return tokens, jnp.asarray(images), masking.media_index(tokens, config.image_token_id)


@functools.lru_cache(maxsize=None)
def _init(config: FlamingoConfig, seed: int):
  init = jax.jit(lambda: nn.meta.unbox(
      Flamingo(config).init(jax.random.key(seed), *example_inputs(config))["params"]))
  return init()


def init_params(config: FlamingoConfig, seed=0):
  """Initialised (unboxed) params, compiled once per config and seed; a fresh copy each call."""
  return jax.tree.map(lambda a: a, _init(config, seed))


@functools.lru_cache(maxsize=None)
def apply_fn(config: FlamingoConfig):
  """jit(Flamingo(config).apply), compiled once per config and input shapes."""
  return jax.jit(Flamingo(config).apply)


def open_gates(tree):
  """Every gate of a (params or trainable) tree at 0.5, so the images change the logits."""
  def open_gate(path, x):
    return jnp.full_like(x, 0.5) if path[-1].key in ("attn_gate", "ffw_gate") else x
  return jax.tree_util.tree_map_with_path(open_gate, tree)


def trained_run(workdir: str, config: Config, step: int = 7):
  """A task=flamingo run in `workdir` as the trainer leaves it: its record (`config`, the frozen
  towers it builds from config.seed) and a checkpoint at `step` whose trainable tree has open gates
  (so it differs from the seed's and must come from the checkpoint). Returns the full param tree
  the run holds (`pretrained.load_trained(workdir)` rebuilds it)."""
  frozen, trainable = ptree.split(init_params(config.model, seed=config.seed))
  trainable = open_gates(trainable)
  pretrained.record_run(workdir, config, frozen)
  checkpointer = Checkpointer(workdir, keep=1)
  checkpointer.save(step, TrainState(jnp.asarray(step, jnp.int32), trainable,
                                     make_optimizer(config.optimizer).init(trainable),
                                     jax.random.key_data(jax.random.key(1))), {})
  checkpointer.wait()
  checkpointer.close()
  return ptree.merge(frozen, trainable)


def write_tokenizer(path: str, vocab_size: int = 512, seed: int = 0) -> None:
  """A sentencepiece model of `vocab_size` pieces at `path`: 512 trained (unigram, byte fallback,
  as `data_pipelines.tokenizer.train` does) on random words, the rest reserved control pieces that
  no text encodes to (training 32k real pieces takes minutes)."""
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 8))) for _ in range(400)]
  with open(path, "wb") as f:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(rng.choice(words, 12)) for _ in range(2000)]),
        model_writer=f, vocab_size=vocab_size, model_type="unigram", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, hard_vocab_limit=True,
        minloglevel=2, num_threads=1,
        control_symbols=[f"<reserved{i}>" for i in range(max(vocab_size - 512, 0))])


# Records per split and kind of the demo corpora the tests build (data_pipelines.demo.build's `sizes`):
# every kind, a few batches of each.
DEMO_SIZES = {"train": {"pairs": 200, "interleaved": 100, "video": 60, "naming": 100,
                        "naming_words": 100, "naming_images": 100},
              "eval": {"pairs": 60, "interleaved": 30, "video": 20, "naming": 30, "naming_words": 30,
                       "naming_images": 30}}
