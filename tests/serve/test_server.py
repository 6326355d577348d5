"""The HTTP server (flamingo_jax/serve): a real client (http.client) against uvicorn on a free
localhost port, serving a tiny random-weight run built as the trainer leaves one."""

import base64
import concurrent.futures
import dataclasses
import http.client
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from data_pipelines import images as image_ops
from data_pipelines.tokenizer import Tokenizer
from experiments import flamingo as flamingo_presets
from flamingo_jax.config import Config, FlamingoConfig, SamplingConfig, ServeConfig
from flamingo_jax.config.schema import ConfigError
from flamingo_jax.inference import decoding
from flamingo_jax.inference.engine import Engine
from flamingo_jax.serve.app import make_app, running
from flamingo_jax.weights import pretrained
from tests.builders import trained_run, write_tokenizer
from tests.serve.alone import generate_alone

MAX_NEW = 8
SERVE = ServeConfig(slots=8, max_prompt_tokens=32, max_images=2, max_pixels=64 * 64,
                    max_body_bytes=64_000, max_candidates=3, max_candidate_tokens=8,
                    timeout_s=120.0, sampling=SamplingConfig(max_new_tokens=MAX_NEW))


@dataclasses.dataclass
class Served:
  url: str
  config: FlamingoConfig
  params: dict
  tokenizer: Tokenizer
  root: pathlib.Path  # serve.image_root: a.png, b.png, link.png -> ../outside.png
  engine: Engine


def _png(rng, height, width) -> bytes:
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, "PNG")
  return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("serve")
  write_tokenizer(str(tmp / "tok.model"))
  config = Config.from_dict(flamingo_presets.get_config("tiny")).replace(
      {"data.tokenizer": str(tmp / "tok.model")})
  trained_run(str(tmp / "run"), config)
  config, params = pretrained.load_trained(str(tmp / "run"))  # As the command line does.
  tokenizer = Tokenizer.of_run(config)
  root = tmp / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.png"):
    (root / name).write_bytes(_png(rng, 40, 50))
  (tmp / "outside.png").write_bytes(_png(rng, 40, 50))
  os.symlink(tmp / "outside.png", root / "link.png")
  app = make_app(config.model, params, tokenizer, SERVE.replace({"image_root": str(root)}))
  with running(app) as url:
    yield Served(url, config.model, params, tokenizer, root, app.state.engine)


def _call(url, method, path, body=None, chunked=False):
  """-> (status, parsed JSON answer). body: a dict (sent as JSON) or bytes."""
  connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=300)
  data = json.dumps(body).encode() if isinstance(body, dict) else body
  try:
    if chunked:
      connection.request(method, path, body=iter([data[i:i + 4096] for i in range(0, len(data), 4096)]),
                         headers={"Content-Type": "application/json"}, encode_chunked=True)
    else:
      connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())
  finally:
    connection.close()


def _words(rng, n):
  return ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 8))) for _ in range(n)]


def _prompt(tokenizer, rng, num_images, length):
  """A prompt of exactly `length` tokens: random words, `<image>` before the first one (one image)
  and before the middle one (two)."""
  while True:
    for n in range(1, length):
      words = _words(rng, n)
      marks = set(sorted({0, n // 2})[:num_images])
      text = "".join(("<image>" if i in marks else " ") + w for i, w in enumerate(words))
      if len(tokenizer.encode_prompt(text)) >= length:
        break
    if len(tokenizer.encode_prompt(text)) == length:
      return text


def _image_bytes(served, ref):
  return (base64.b64decode(ref["base64"]) if "base64" in ref
          else (served.root / ref["path"]).read_bytes())


def _expected(served, body):
  """The answer `decoding.generate` gives the request alone (a text-only prompt with one blank
  image, as the generate CLI runs it: the same unless the model writes `<image>`)."""
  tokenizer, config = served.tokenizer, served.config
  size = config.vision.image_size
  images = np.stack([image_ops.decode(_image_bytes(served, ref), size)[None]
                     for ref in body["images"]] or [np.zeros((1, size, size, 3), np.uint8)])
  tokens, reason = generate_alone(config, served.params, tokenizer.encode_prompt(body["prompt"]),
                                  images, (config.eoc_token_id, tokenizer.eos_id),
                                  body.get("max_new_tokens", MAX_NEW), MAX_NEW)
  return {"text": tokenizer.decode(tokens), "tokens": list(tokens), "stop_reason": reason}


def test_concurrent_requests_answer_as_one_at_a_time_and_as_generate_alone(served, monkeypatch):
  """8 requests (prompts of 12 and 20 tokens, so two prompt buckets; 1 or 2 images, sent inline or
  as paths; different max_new_tokens) sent at once, held until all have arrived so that they share
  every step, then one at a time: the same answers, each what `decoding.generate` gives the request
  alone."""
  rng = np.random.default_rng(1)
  bodies = []
  for i, max_new in enumerate([8, 5, None, 3, 8, 6, None, 8]):
    num_images = 1 + i % 2
    refs = [{"base64": base64.b64encode(_png(rng, 40, 50)).decode()}, {"path": "a.png"}]
    body = {"prompt": _prompt(served.tokenizer, rng, num_images, (12, 20)[i % 2]),
            "images": refs[:num_images] if i % 4 < 2 else refs[::-1][:num_images]}
    if max_new is not None:
      body["max_new_tokens"] = max_new
    bodies.append(body)
  expected = [(200, _expected(served, body)) for body in bodies]
  lengths = [len(answer["tokens"]) for _, answer in expected]
  assert lengths == [8, 5, 8, 3, 8, 6, 8, 8]  # No stop token: each row runs its max_new_tokens.

  engine, arrived, rows_per_step, admitting = served.engine, threading.Event(), [], []
  admit, step = engine.admit, engine.step
  monkeypatch.setattr(engine, "admit", lambda requests: (admitting.append(len(requests)),
                                                         arrived.wait(), admit(requests))[2])
  monkeypatch.setattr(engine, "step", lambda: (rows_per_step.append(len(engine.handles)),
                                               step())[1])
  post = lambda body: _call(served.url, "POST", "/generate", body)  # noqa: E731
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = [pool.submit(post, body) for body in bodies]
    deadline = time.monotonic() + 120
    try:
      # The first admission (of those that had arrived) waits until all 8 are in.
      while _call(served.url, "GET", "/healthz")[1]["waiting"] + sum(admitting) < 8:
        assert time.monotonic() < deadline, "the 8 requests never all arrived"
        time.sleep(0.01)
    finally:
      arrived.set()
    assert [answer.result() for answer in answers] == expected
  monkeypatch.undo()
  # All 8 rows filled before the first step; a row leaves after its max_new_tokens - 1 steps.
  assert rows_per_step == [sum(n > k for n in lengths) for k in range(1, MAX_NEW)]
  assert [post(body) for body in bodies] == expected
  text_only = {"prompt": _prompt(served.tokenizer, rng, 0, 12)}
  assert post(text_only) == (200, _expected(served, {**text_only, "images": []}))


def test_score_is_decoding_score_of_the_request(served):
  rng = np.random.default_rng(2)
  tokenizer = served.tokenizer
  candidates = []
  while len(candidates) < 3:
    candidate = " " + " ".join(_words(rng, 2))
    if len(tokenizer.encode_prompt(candidate)) == 4:  # No padding: the same shapes as below.
      candidates.append(candidate)
  image = _png(rng, 40, 50)
  body = {"prompt": _prompt(tokenizer, rng, 1, 16), "images": [{"base64": base64.b64encode(image).decode()}],
          "candidates": candidates}
  status, answer = _call(served.url, "POST", "/score", body)
  tokens = np.asarray([tokenizer.encode_prompt(body["prompt"])], np.int32)
  images = image_ops.decode(image, served.config.vision.image_size)[None, None, None]
  ids = np.asarray([[tokenizer.encode_prompt(c) for c in candidates]], np.int32)
  scores = decoding.score(served.config, served.params, tokens, np.ones_like(tokens, bool), images,
                          ids, np.ones_like(ids, bool))
  assert (status, answer) == (200, {"scores": np.asarray(scores)[0].tolist()})


def _bad_requests(served):
  """(what, path, body, status, error code) for every refusal the server has."""
  image = {"base64": base64.b64encode((served.root / "a.png").read_bytes()).decode()}
  big = {"base64": base64.b64encode(_png(np.random.default_rng(3), 80, 80)).decode()}
  one = "<image>abc def"
  too_long = "<image>" + " ".join(["abcdefg"] * 40)
  return [
      ("not JSON", "/generate", b"{prompt", 400, "invalid_json"),
      ("prompt not a string", "/generate", {"prompt": 5}, 422, "invalid_body"),
      ("max_new_tokens a string", "/generate", {"prompt": "abc", "max_new_tokens": "8"}, 422,
       "invalid_body"),
      ("unknown field", "/generate", {"prompt": "abc", "temperature": 2.0}, 422, "invalid_body"),
      ("two sources", "/generate", {"prompt": one, "images": [{**image, "path": "a.png"}]}, 422,
       "invalid_body"),
      ("empty prompt", "/generate", {"prompt": ""}, 400, "empty_prompt"),
      ("too many images", "/generate", {"prompt": "<image>" * 3, "images": [image] * 3}, 400,
       "too_many_images"),
      ("prompt too long", "/generate", {"prompt": too_long, "images": [image]}, 400,
       "prompt_too_long"),
      ("markers != images", "/generate", {"prompt": one, "images": [image] * 2}, 400,
       "image_count_mismatch"),
      ("max_new_tokens over the cap", "/generate", {"prompt": one, "images": [image],
                                                    "max_new_tokens": MAX_NEW + 1}, 400,
       "max_new_tokens_out_of_range"),
      ("max_new_tokens 0", "/generate", {"prompt": one, "images": [image], "max_new_tokens": 0},
       400, "max_new_tokens_out_of_range"),
      ("bad base64", "/generate", {"prompt": one, "images": [{"base64": "abc$"}]}, 400,
       "bad_base64"),
      ("not an image", "/generate", {"prompt": one, "images": [
          {"base64": base64.b64encode(b"not an image").decode()}]}, 400, "bad_image"),
      ("too many pixels", "/generate", {"prompt": one, "images": [big]}, 400, "too_many_pixels"),
      ("path escapes the root", "/generate", {"prompt": one, "images": [
          {"path": "../outside.png"}]}, 403, "path_outside_root"),
      ("symlink out of the root", "/generate", {"prompt": one, "images": [{"path": "link.png"}]},
       403, "path_outside_root"),
      ("absolute path outside", "/generate", {"prompt": one, "images": [
          {"path": str(served.root.parent / "outside.png")}]}, 403, "path_outside_root"),
      ("missing file", "/generate", {"prompt": one, "images": [{"path": "nope.png"}]}, 404,
       "image_not_found"),
      ("no candidates", "/score", {"prompt": one, "images": [image], "candidates": []}, 400,
       "candidate_count"),
      ("too many candidates", "/score", {"prompt": one, "images": [image],
                                         "candidates": ["a"] * 4}, 400, "candidate_count"),
      ("candidate too long", "/score", {"prompt": one, "images": [image],
                                        "candidates": [" ".join(["abcdefg"] * 9)]}, 400,
       "candidate_length"),
      ("body too large", "/generate", {"prompt": "a" * SERVE.max_body_bytes}, 413,
       "body_too_large"),
  ]


def test_bad_requests_get_4xx_naming_the_limit_and_the_server_keeps_serving(served):
  good = {"prompt": "<image>abc def", "images": [{"path": "a.png"}], "max_new_tokens": 3}
  before = _call(served.url, "POST", "/generate", good)
  cases = _bad_requests(served)
  refusals = {}
  for what, path, body, _, _ in cases:
    status, answer = _call(served.url, "POST", path, body)
    refusals[what] = (status, answer["error"])
  assert refusals == {what: (status, code) for what, _, _, status, code in cases}
  image = {"path": "a.png"}
  assert _call(served.url, "POST", "/generate", {"prompt": "<image>" * 3, "images": [image] * 3}) == (
      400, {"error": "too_many_images",
            "message": "3 images; this server takes at most serve.max_images=2."})
  oversized = json.dumps({"prompt": "a" * SERVE.max_body_bytes}).encode()
  assert _call(served.url, "POST", "/generate", oversized) == (413, {
      "error": "body_too_large",
      "message": f"the body is {len(oversized)} bytes (or more); this server takes at most "
                 "serve.max_body_bytes=64000."})
  status, answer = _call(served.url, "POST", "/generate", oversized, chunked=True)  # No length.
  assert (status, answer["error"]) == (413, "body_too_large")
  assert _call(served.url, "GET", "/generate")[0] == 405
  assert _call(served.url, "POST", "/generate", good) == before
  assert before[0] == 200 and len(before[1]["tokens"]) == 3
  assert _call(served.url, "GET", "/healthz") == (200, {"status": "ok", "slots": 8, "active": 0,
                                                        "waiting": 0})


def test_a_request_past_its_timeout_gets_504_and_its_row_is_freed(served, monkeypatch):
  """A server without an image root and a 1 s timeout, whose engine steps take 0.3 s."""
  app = make_app(served.config, served.params, served.tokenizer, SERVE.replace({"timeout_s": 1.0}),
                 warm_up=False)
  engine = app.state.engine
  step = engine.step
  monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.3), step())[1])
  image = {"base64": base64.b64encode((served.root / "a.png").read_bytes()).decode()}
  with running(app) as url:
    assert _call(url, "POST", "/generate", {"prompt": "<image>abc", "images": [image]}) == (504, {
        "error": "timeout",
        "message": "no answer within serve.timeout_s=1.0 s; retry, or ask for fewer tokens."})
    assert _call(url, "POST", "/generate", {"prompt": "<image>abc", "images": [
        {"path": "a.png"}]}) == (403, {
            "error": "paths_refused",
            "message": "images[0].path: this server reads no image paths (serve.image_root is not "
                       "set); send the image as base64."})
    deadline = time.monotonic() + 60
    while _call(url, "GET", "/healthz")[1]["active"] and time.monotonic() < deadline:
      time.sleep(0.1)
    assert _call(url, "GET", "/healthz") == (200, {"status": "ok", "slots": 8, "active": 0,
                                                   "waiting": 0})


def test_beam_search_is_not_served():
  with pytest.raises(ConfigError, match="serve.sampling.strategy='beam': the server decodes with "
                                        "one of greedy, sample; beam search is not served"):
    ServeConfig.from_dict({"sampling": {"strategy": "beam"}}, "serve")


def test_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path):
  cli = subprocess.run([sys.executable, "-m", "flamingo_jax.serve", f"--checkpoint={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
  assert (cli.returncode, cli.stderr.strip().splitlines()[-1]) == (1, (
      f"error: {tmp_path} has no run.json: pass the workdir of a training run (runs record their "
      "config when they start)."))
