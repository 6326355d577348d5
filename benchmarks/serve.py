r"""Serving benchmark: the HTTP server's throughput and latency with 1 and 8 concurrent clients.

  python benchmarks/serve.py [--models tiny,bench] [--slots 8] [--requests 4] [--prompt_tokens 24]
                             [--new_tokens 32] [--repeats 3]

For each model: a random-weight run (tests/builders.py: its tokenizer, record and checkpoint, as the
tests build one) served by `python -m flamingo_jax.serve` in a subprocess on a localhost port, with
--serve.slots rows and `serve.ignore_stop_tokens`, so every request generates exactly new_tokens
tokens (greedy). Once it answers (every shape compiled before it listens) and one request has run,
C clients (threads with http.client) each send --requests requests one after the other: a prompt of
about prompt_tokens tokens with one random image of the model's size, sent as a base64 PNG.
1 client, then 8, --repeats times in turn; each figure is the median of its runs (latencies pooled).
The engine steps only the rows in use (a power of two covering the busy rows), so 1 client on the
8-slot server steps one row: the same work as a 1-slot server, the best baseline for 1 client.
Prints JSON lines per model:
  serve_tokens_per_s   new tokens / wall time of a run, the median (extras: clients=1|8, slots,
                       runs: each run's figure)
  serve_p50_ms, serve_p99_ms   per-request latency seen by the client (send to full answer),
                       over every run's requests (extra: requests, their number)
  serve_batching_gain  median tokens/s with 8 clients over that with 1, same server (target >= 4)
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter, environment  # noqa: E402
from data_pipelines.tokenizer import Tokenizer  # noqa: E402
from experiments import flamingo as presets  # noqa: E402
from flamingo_jax.config import Config  # noqa: E402
from tests.builders import trained_run, write_tokenizer  # noqa: E402

emit = emitter("serve")
ROOT = os.path.join(os.path.dirname(__file__), "..")


def build_run(directory: str, preset: str) -> tuple[str, Config]:
  """A random-weight Flamingo run of `preset` in directory/run -> (its workdir, its config)."""
  tokenizer = os.path.join(directory, "tokenizer.model")
  config = Config.from_dict(presets.get_config(preset)).replace({"data.tokenizer": tokenizer})
  write_tokenizer(tokenizer, config.model.lm.vocab_size)
  trained_run(os.path.join(directory, "run"), config)
  return os.path.join(directory, "run"), config


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def call(port: int, path: str, body: dict | None = None) -> dict:
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
  try:
    connection.request("POST" if body else "GET", path, json.dumps(body) if body else None,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
      raise RuntimeError(f"{path}: {response.status} {answer}")
    return answer
  finally:
    connection.close()


@contextlib.contextmanager
def server(run: str, slots: int, prompt_tokens: int, new_tokens: int, log_path: str):
  """`python -m flamingo_jax.serve` on `run` in a subprocess, once it answers -> its port."""
  port = free_port()
  with open(log_path, "w+") as log:
    process = subprocess.Popen(
        [sys.executable, "-m", "flamingo_jax.serve", f"--checkpoint={run}", f"--port={port}",
         f"--serve.slots={slots}", f"--serve.max_prompt_tokens={prompt_tokens}",
         "--serve.max_images=1", f"--serve.sampling.max_new_tokens={new_tokens}",
         "--serve.ignore_stop_tokens=true", "--serve.timeout_s=3600"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
      while True:
        if process.poll() is not None:
          log.seek(0)
          raise RuntimeError(f"the server exited ({process.returncode}): {log.read()}")
        try:
          call(port, "/healthz")
          break
        except OSError:
          time.sleep(1)
      yield port
    finally:
      process.terminate()
      process.wait()


def bodies(config: Config, prompt_tokens: int, count: int, new_tokens: int) -> list[dict]:
  """`count` requests: one prompt of prompt_tokens tokens or a few more (whole words), each with its
  own random image."""
  tokenizer = Tokenizer.of_run(config)
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 8))) for _ in range(100)]
  prompt = "<image>"
  while len(tokenizer.encode_prompt(prompt)) < prompt_tokens:
    prompt += " " + words[len(prompt) % len(words)]
  size = config.model.vision.image_size
  out = []
  for _ in range(count):
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(png, "PNG")
    out.append({"prompt": prompt, "images": [{"base64": base64.b64encode(png.getvalue()).decode()}],
                "max_new_tokens": new_tokens})
  return out


def drive(port: int, requests: list[dict], clients: int) -> tuple[float, list[float]]:
  """Each of `clients` threads sends its share of `requests` in turn -> (wall seconds, per-request
  latencies in seconds)."""
  def client(share):
    latencies = []
    for body in share:
      start = time.perf_counter()
      call(port, "/generate", body)
      latencies.append(time.perf_counter() - start)
    return latencies

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    shares = list(pool.map(client, [requests[c::clients] for c in range(clients)]))
  return time.perf_counter() - start, [t for share in shares for t in share]


def measure(port: int, requests: list[dict], per_client: int, repeats: int,
            emit_tag: dict) -> dict[int, float]:
  """Drives the server with 1 client, then 8, each sending `per_client` of `requests`, `repeats`
  times in turn (the two alternate, so a slower spell of a shared machine falls on both), and emits
  the figures -> {clients: the median tokens/s}."""
  rates, latencies = {1: [], 8: []}, {1: [], 8: []}
  for _ in range(repeats):
    for clients in rates:
      share = requests[:clients * per_client]
      seconds, times = drive(port, share, clients)
      rates[clients].append(len(share) * share[0]["max_new_tokens"] / seconds)
      latencies[clients] += times
  for clients in rates:
    tag = dict(clients=clients, requests=len(latencies[clients]), repeats=repeats, **emit_tag)
    emit("serve_tokens_per_s", float(np.median(rates[clients])), "tokens/s",
         runs=[round(r, 1) for r in rates[clients]], **tag)
    emit("serve_p50_ms", 1000 * np.percentile(latencies[clients], 50), "ms", **tag)
    emit("serve_p99_ms", 1000 * np.percentile(latencies[clients], 99), "ms", **tag)
  return {clients: float(np.median(r)) for clients, r in rates.items()}


def bench_model(preset: str, args) -> None:
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    run, config = build_run(directory, preset)
    requests = bodies(config, args.prompt_tokens, 1 + 8 * args.requests, args.new_tokens)
    prompt_tokens = len(Tokenizer.of_run(config).encode_prompt(requests[0]["prompt"]))
    tag = dict(model=preset, new_tokens=args.new_tokens, prompt_tokens=prompt_tokens)
    log = os.path.join(directory, "server.log")
    with server(run, args.slots, prompt_tokens, args.new_tokens, log) as port:
      emit("serve_startup_s", time.perf_counter() - start, "s", model=preset,
           note="run built, loaded, every shape compiled")
      call(port, "/generate", requests[-1])  # A first request: nothing left to warm up.
      rates = measure(port, requests, args.requests, args.repeats, dict(slots=args.slots, **tag))
    emit("serve_batching_gain", rates[8] / rates[1], "ratio", model=preset, slots=args.slots,
         target=4)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--models", default="tiny,bench")
  parser.add_argument("--slots", type=int, default=8)
  parser.add_argument("--requests", type=int, default=4, help="Requests per client.")
  parser.add_argument("--prompt_tokens", type=int, default=24)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3,
                      help="Runs of each client count, 1 and 8 in turn; the median is reported.")
  args = parser.parse_args()
  environment(emit)
  for preset in args.models.split(","):
    bench_model(preset, args)


if __name__ == "__main__":
  main()
