"""The FastAPI app: a trained model behind a JSON API, decoded with continuous batching.

  GET  /healthz   {"status": "ok", "slots": B, "active": rows in use, "waiting": queued requests}
  POST /generate  {"prompt", "images", "max_new_tokens"} -> {"text", "tokens", "stop_reason"}:
                  the new text and ids, a stop token not included; stop_reason "stop" (`<EOC>` or
                  EOS) or "length" (max_new_tokens)
  POST /score     {"prompt", "images", "candidates"} -> {"scores"}: log p(candidate | prompt) each

Request bodies and limits: `inputs.py`. Errors are JSON {"error": code, "message": ...} with a 4xx
status (413 for a body over serve.max_body_bytes, 504 past serve.timeout_s, 503 when
serve.max_waiting requests already wait), or 500 for a request the engine failed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import fastapi
import uvicorn
from fastapi.responses import JSONResponse

from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import FlamingoConfig, ServeConfig
from flamingo_jax.inference.engine import Engine
from flamingo_jax.serve import inputs
from flamingo_jax.serve.inputs import RequestError
from flamingo_jax.serve.worker import Job, Worker
from flamingo_jax.weights import tree as ptree


def make_app(config: FlamingoConfig, params: ptree.Params, tokenizer: Tokenizer,
             serve: ServeConfig, warm_up: bool = True) -> fastapi.FastAPI:
  """The app serving `config` / `params` (a run's, `pretrained.load_trained`) with its tokenizer;
  `warm_up` compiles every request shape first (`Engine.warm_up`). Its engine: `app.state.engine`."""
  if tokenizer.vocab_size != config.lm.vocab_size:
    raise ValueError(f"The tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                     f"model.lm.vocab_size={config.lm.vocab_size}; pass the one the model was "
                     "trained with.")
  engine = Engine(config, params, serve, (config.eoc_token_id, tokenizer.eos_id))
  if warm_up:
    engine.warm_up()
  worker = Worker(engine, serve.max_waiting)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    worker.start()
    try:
      yield
    finally:
      worker.stop()

  app = fastapi.FastAPI(title="flamingo_jax", lifespan=lifespan, docs_url=None, redoc_url=None,
                        openapi_url=None)
  app.state.engine = engine

  @app.exception_handler(RequestError)
  async def refused(request, error: RequestError):
    return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status)

  @app.exception_handler(Exception)
  async def failed(request, error: Exception):  # A bug: still JSON (the traceback goes to the log).
    return JSONResponse({"error": "internal_error", "message": f"{type(error).__name__}: {error}"},
                        status_code=500)

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "slots": serve.slots, "active": serve.slots - engine.free,
            "waiting": worker.waiting}

  def prepared(body: inputs.GenerateBody | inputs.ScoreBody):
    """The body's checked prompt, its images decoded off the event loop."""
    return asyncio.to_thread(inputs.prompt, body, tokenizer, config, serve)

  async def queued(prompt: inputs.Prompt, max_new_tokens: int, candidates):
    """The engine's answer to the job."""
    loop = asyncio.get_running_loop()
    job = Job(prompt, max_new_tokens, candidates, loop, loop.create_future())
    worker.submit(job)
    try:
      return await job.future
    finally:
      job.given_up = True  # Answered, or timed out: either way the engine may drop it.

  @app.post("/generate")
  async def generate(request: fastapi.Request):
    async def work():
      body = inputs.parse(inputs.GenerateBody, await _read_body(request, serve.max_body_bytes))
      max_new_tokens = inputs.max_new_tokens(body, serve)
      return await queued(await prepared(body), max_new_tokens, None)
    done = await _within(serve.timeout_s, work())
    return {"text": tokenizer.decode(done.tokens), "tokens": list(done.tokens),
            "stop_reason": done.stop_reason}

  @app.post("/score")
  async def score(request: fastapi.Request):
    async def work():
      body = inputs.parse(inputs.ScoreBody, await _read_body(request, serve.max_body_bytes))
      candidates = inputs.candidates(body, tokenizer, serve)
      return await queued(await prepared(body), 0, candidates)
    return {"scores": [float(s) for s in await _within(serve.timeout_s, work())]}

  return app


async def _within(timeout_s: float, work):
  try:
    return await asyncio.wait_for(work, timeout_s)
  except TimeoutError:
    raise RequestError(504, "timeout", f"no answer within serve.timeout_s={timeout_s} s; retry, "
                       "or ask for fewer tokens.") from None


async def _read_body(request: fastapi.Request, limit: int) -> bytes:
  """The request body; 413 past `limit` bytes (from Content-Length, or counted as it streams)."""
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise _too_large(int(declared), limit)
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > limit:
      raise _too_large(len(body), limit)
  return bytes(body)


def _too_large(size: int, limit: int) -> RequestError:
  return RequestError(413, "body_too_large", f"the body is {size} bytes (or more); this server "
                      f"takes at most serve.max_body_bytes={limit}.")


@contextlib.contextmanager
def running(app: fastapi.FastAPI, host: str = "127.0.0.1", port: int = 0):
  """Serves `app` with uvicorn on a thread for the `with` block -> its base URL (port 0: any free
  port). Tests and benchmarks/serve.py use it."""
  listener = socket.socket()
  listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  listener.bind((host, port))
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
  thread.start()
  while not server.started:
    if not thread.is_alive():
      raise RuntimeError("uvicorn stopped while starting; its log says why.")
    time.sleep(0.01)
  try:
    yield f"http://{host}:{listener.getsockname()[1]}"
  finally:
    server.should_exit = True
    thread.join()
    listener.close()
