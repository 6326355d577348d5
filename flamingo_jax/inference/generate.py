r"""CLI: text from a trained Flamingo for a prompt with images.

  python -m flamingo_jax.inference.generate --checkpoint workdirs/quickstart/flamingo \
      --image a.jpg --prompt "<image>This one is" [--sampling.strategy=beam --sampling.num_beams=3]

--checkpoint is the workdir of a Flamingo-stage training run: the model, its frozen towers (checked
against the fingerprints the run recorded) and its tokenizer come from the run's own record
(`weights.pretrained.load_trained`), the trainable weights from its latest checkpoint. Each
`<image>` in the prompt takes the next --image (decoded and centre-cropped as the evaluation
pipeline does). Decoding settings: `--sampling.<field>=` (flamingo_jax/config/evaluation.py,
SamplingConfig); generation stops at `<EOC>` or the tokenizer's EOS. `--mesh=data,fsdp,tensor`
splits the model over this host's devices as training does (default: every device on fsdp); the
weights are loaded straight onto their shards.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import images as image_ops
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax import sharding
from flamingo_jax.config import FlamingoConfig, SamplingConfig
from flamingo_jax.inference import decoding
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.pretrained import load_trained


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


def generate_text(model_config: FlamingoConfig, params: ptree.Params, tokenizer: Tokenizer, prompt: str,
                  image_paths: Sequence[str], sampling: SamplingConfig,
                  seed: int = 0, mesh: jax.sharding.Mesh | None = None) -> str:
  """The continuation of `prompt`, up to (not including) `<EOC>` or EOS; with `mesh`, params laid
  out on it (`load_trained(run, mesh)`) and decoding split over it."""
  tokens, images = prepare_prompt(model_config, tokenizer, prompt, image_paths)
  new_tokens, lengths = decoding.generate(
      model_config, params, tokens, np.ones_like(tokens, bool), images, sampling,
      stop_tokens=(model_config.eoc_token_id, tokenizer.eos_id), rng=jax.random.key(seed),
      mesh=mesh)
  return tokenizer.decode(np.asarray(new_tokens)[0, :int(lengths[0])])


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  sampling = SamplingConfig.from_cli(f.sampling, "sampling")
  try:
    mesh = sharding.mesh_from_flag(f.mesh)
    config, params = load_trained(f.checkpoint, mesh)
    tokenizer = Tokenizer.of_run(config, f.tokenizer)
    text = generate_text(config.model, params, tokenizer, f.prompt, f.image or [], sampling, f.seed,
                         mesh)
  except ValueError as e:  # A run, a tower, a tokenizer or a prompt that does not fit.
    raise SystemExit(f"error: {e}") from None
  print(text)


if __name__ == "__main__":
  config_flags.DEFINE_config_dict("sampling", SamplingConfig().as_config_dict(),
                                  "Decoding settings: --sampling.strategy=beam, ...")
  flags.DEFINE_string("checkpoint", None, "Workdir of the Flamingo-stage training run.")
  flags.DEFINE_multi_string("image", None, "Image file for each <image> in the prompt, in order.")
  flags.DEFINE_string("prompt", None, 'Prompt text, e.g. "<image>This one is".')
  flags.DEFINE_string("tokenizer", "", "Sentencepiece model (default: the run's data.tokenizer).")
  flags.DEFINE_integer("seed", 0, "Sampling: random seed.")
  flags.DEFINE_string("mesh", "1,-1,1", "data,fsdp,tensor sizes of the mesh the model is split "
                      "over, as in training (-1: the rest of the devices).")
  flags.mark_flags_as_required(["checkpoint", "prompt"])
  app.run(main)
