"""The HTTP server: `python -m flamingo_jax.serve --checkpoint RUN` (FastAPI on uvicorn).

  inputs    request bodies -> engine inputs, every limit of `ServeConfig` checked (4xx `RequestError`)
  worker    the thread that owns the engine: admits waiting requests into free rows, steps, answers
  app       the FastAPI app (`/healthz`, `/generate`, `/score`) and `running` (uvicorn in a thread)
  __main__  the command line

May import: `flamingo_jax.config`, `flamingo_jax.sharding`, `flamingo_jax.models`,
`flamingo_jax.weights`, `flamingo_jax.inference`, `data_pipelines`. Nothing imports it.
"""
