r"""CLI: text from a trained Flamingo for a prompt with images.

  python -m flamingo_jax.generate --config experiments/flamingo.py:tiny,demo \
      --checkpoint workdirs/quickstart/flamingo --image a.jpg --prompt "<image>Output:"

--checkpoint is the workdir of a Flamingo-stage training run (its latest checkpoint: the trainable
tree); the frozen towers come from the same --config as in training (`init.*` exports, or the seed),
exactly as `flamingo_jax.train` builds them. Each `<image>` in the prompt takes the next --image
(decoded and centre-cropped as the evaluation pipeline does). The tokenizer defaults to the config's
`data.tokenizer`. Decoding settings: --strategy greedy|beam|sample and the SamplingConfig fields;
generation stops at `<EOC>` or the tokenizer's EOS.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import images as image_ops
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax import decoding
from flamingo_jax import params as P
from flamingo_jax import train as trainer
from flamingo_jax.checkpointing import Checkpointer
from flamingo_jax.config import FlamingoConfig


def load_trained(config: ml_collections.ConfigDict, workdir: str) -> tuple[FlamingoConfig, P.Params]:
  """(model config, full param tree on the host): the frozen towers as training builds them, merged
  with the trainable tree of the latest checkpoint in `<workdir>/checkpoints`."""
  setup = trainer.build_setup(config)
  checkpointer = Checkpointer(workdir, keep=1)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise ValueError(f"No checkpoint under {workdir}/checkpoints: pass --checkpoint <the workdir of "
                     "a Flamingo-stage training run>.")
  frozen, _ = trainer.initial_params(config, setup, with_trainable=False)
  state, _ = checkpointer.restore(step, setup.abstract_state)
  checkpointer.close()
  return setup.model_config, P.merge(jax.device_get(frozen), jax.device_get(state.trainable))


def prepare_prompt(model_config: FlamingoConfig, tokenizer: Tokenizer, prompt: str,
                   image_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """prompt -> (tokens [1, T] int32, images [1, N, 1, H, W, 3] uint8), one image per `<image>`."""
  if tokenizer.vocab_size != model_config.lm.vocab_size:
    raise ValueError(f"The tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                     f"model.lm.vocab_size={model_config.lm.vocab_size}; pass the --tokenizer the "
                     "model was trained with.")
  tokens = tokenizer.encode_prompt(prompt)
  if not tokens:
    raise ValueError("--prompt is empty.")
  num_images = tokens.count(model_config.image_token_id)
  if num_images != len(image_paths):
    raise ValueError(f"--prompt has {num_images} <image> token(s) but {len(image_paths)} --image "
                     "path(s) were given; give one --image per <image>.")
  size = model_config.vision.image_size
  frames = [image_ops.decode(open(path, "rb").read(), size)[None] for path in image_paths]
  images = np.stack(frames) if frames else np.zeros((1, 1, size, size, 3), np.uint8)
  return np.asarray([tokens], np.int32), images[None]


def generate_text(model_config: FlamingoConfig, params: P.Params, tokenizer: Tokenizer, prompt: str,
                  image_paths: Sequence[str], sampling: decoding.SamplingConfig,
                  seed: int = 0) -> str:
  """The continuation of `prompt`, up to (not including) `<EOC>` or EOS."""
  tokens, images = prepare_prompt(model_config, tokenizer, prompt, image_paths)
  new_tokens, lengths = decoding.generate(
      model_config, params, tokens, np.ones_like(tokens, bool), images, sampling,
      stop_tokens=(model_config.eoc_token_id, tokenizer.eos_id), rng=jax.random.key(seed))
  return tokenizer.decode(np.asarray(new_tokens)[0, :int(lengths[0])])


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  sampling = decoding.SamplingConfig(
      strategy=f.strategy, max_new_tokens=f.max_new_tokens, num_beams=f.num_beams,
      length_penalty=f.length_penalty, temperature=f.temperature, top_k=f.top_k, top_p=f.top_p)
  model_config, params = load_trained(f.config, f.checkpoint)
  tokenizer = Tokenizer(f.tokenizer or f.config.data.tokenizer)
  print(generate_text(model_config, params, tokenizer, f.prompt, f.image or [], sampling, f.seed))


if __name__ == "__main__":
  defaults = decoding.SamplingConfig()
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset> used in training.")
  flags.DEFINE_string("checkpoint", None, "Workdir of the Flamingo-stage training run.")
  flags.DEFINE_multi_string("image", None, "Image file for each <image> in the prompt, in order.")
  flags.DEFINE_string("prompt", None, 'Prompt text, e.g. "<image>Output:".')
  flags.DEFINE_string("tokenizer", "", "Sentencepiece model (default: the config's data.tokenizer).")
  flags.DEFINE_enum("strategy", defaults.strategy, list(decoding.STRATEGIES), "Decoding strategy.")
  flags.DEFINE_integer("max_new_tokens", defaults.max_new_tokens, "Most tokens to generate.")
  flags.DEFINE_integer("num_beams", defaults.num_beams, "Beam search: beams per prompt.")
  flags.DEFINE_float("length_penalty", defaults.length_penalty, "Beam search: logprob / len**this.")
  flags.DEFINE_float("temperature", defaults.temperature, "Sampling: logits / temperature.")
  flags.DEFINE_integer("top_k", defaults.top_k, "Sampling: keep the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", defaults.top_p, "Sampling: keep the smallest set of mass >= p (1: all).")
  flags.DEFINE_integer("seed", 0, "Sampling: random seed.")
  flags.mark_flags_as_required(["config", "checkpoint", "prompt"])
  app.run(main)
