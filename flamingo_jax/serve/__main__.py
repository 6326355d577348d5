r"""CLI: serve a trained Flamingo over HTTP, with continuous batching.

  python -m flamingo_jax.serve --checkpoint workdirs/quickstart/flamingo [--host 127.0.0.1]
      [--port 8000] [--serve.slots=8 --serve.image_root=/data/images --serve.sampling.max_new_tokens=32]

--checkpoint is the workdir of a Flamingo-stage training run (as for flamingo_jax.inference.generate:
model, towers and tokenizer from its record, trainable weights from its latest checkpoint). Settings:
`--serve.<field>=` (flamingo_jax/config/serve.py, ServeConfig). Every request shape is compiled before
the server listens. The API: flamingo_jax/serve/app.py; an example is in README.md.
"""

from __future__ import annotations

import uvicorn
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import ServeConfig
from flamingo_jax.serve.app import make_app
from flamingo_jax.weights.pretrained import load_trained


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  serve = ServeConfig.from_cli(f.serve, "serve")
  try:
    config, params = load_trained(f.checkpoint)
    server = make_app(config.model, params, Tokenizer.of_run(config, f.tokenizer), serve)
  except ValueError as e:  # A run, a tower or a tokenizer that does not fit.
    raise SystemExit(f"error: {e}") from None
  print(f"serving {f.checkpoint} on http://{f.host}:{f.port}", flush=True)
  uvicorn.run(server, host=f.host, port=f.port, log_level="warning")


if __name__ == "__main__":
  config_flags.DEFINE_config_dict("serve", ServeConfig().as_config_dict(),
                                  "Server settings: --serve.slots=8, --serve.image_root=...")
  flags.DEFINE_string("checkpoint", None, "Workdir of the Flamingo-stage training run.")
  flags.DEFINE_string("tokenizer", "", "Sentencepiece model (default: the run's data.tokenizer).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.mark_flags_as_required(["checkpoint"])
  app.run(main)
