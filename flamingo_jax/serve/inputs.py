"""Request bodies -> engine inputs. Every limit of `ServeConfig` is checked before the work it bounds
(the image count before any image is read, an image's pixels from its header before it is decoded);
every refusal is a `RequestError`: an HTTP status, a code, and a message naming the field, its value
and the limit.

  POST /generate  {"prompt": "<image>A photo of", "images": [{"base64": "..."} | {"path": "a.jpg"}],
                   "max_new_tokens": 8}            (images and max_new_tokens optional)
  POST /score     {"prompt": ..., "images": [...], "candidates": [" a cat<EOC>", " a dog<EOC>"]}

Each `<image>` in the prompt takes the next image, decoded and centre-cropped as the evaluation
pipeline does (`data_pipelines.images.decode`). An image path is read only when `serve.image_root`
is set, and only if it resolves (symlinks followed) inside that directory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os

import numpy as np
import pydantic

from data_pipelines import images as image_ops
from data_pipelines import paths
from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import FlamingoConfig, ServeConfig


class RequestError(Exception):
  """A request the server refuses: HTTP `status`, a short `code` and a message for the user."""

  def __init__(self, status: int, code: str, message: str):
    super().__init__(message)
    self.status, self.code, self.message = status, code, message


class _Body(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(strict=True, extra="forbid")


class ImageRef(_Body):
  """One image: its encoded bytes in base64, or a path under serve.image_root."""
  base64: str | None = None
  path: str | None = None

  @pydantic.model_validator(mode="after")
  def _one_source(self):
    if (self.base64 is None) == (self.path is None):
      raise ValueError('give exactly one of "base64" and "path"')
    return self


class GenerateBody(_Body):
  prompt: str
  images: list[ImageRef] = []
  max_new_tokens: int | None = None  # None: serve.sampling.max_new_tokens.


class ScoreBody(_Body):
  prompt: str
  images: list[ImageRef] = []
  candidates: list[str]


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A checked prompt: tokens [T] ids and images [n, 1, H, W, 3] uint8, one per `<image>`."""
  tokens: list[int]
  images: np.ndarray


def parse(body_type: type[_Body], body: bytes) -> _Body:
  """JSON bytes -> the body; 400 if not JSON, 422 naming each wrong or missing field."""
  try:
    return body_type.model_validate_json(body)
  except pydantic.ValidationError as e:
    if any(error["type"] == "json_invalid" for error in e.errors()):
      raise RequestError(400, "invalid_json", f"the body is not JSON: {e.errors()[0]['msg']}.")
    fields = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
                       for error in e.errors())
    raise RequestError(422, "invalid_body", f"{fields}.") from None


def prompt(body: GenerateBody | ScoreBody, tokenizer: Tokenizer, config: FlamingoConfig,
           serve: ServeConfig) -> Prompt:
  """The body's prompt and images, checked against the limits and decoded."""
  if len(body.images) > serve.max_images:
    raise RequestError(400, "too_many_images", f"{len(body.images)} images; this server takes at "
                       f"most serve.max_images={serve.max_images}.")
  tokens = tokenizer.encode_prompt(body.prompt)
  if not tokens:
    raise RequestError(400, "empty_prompt", "the prompt is empty.")
  if len(tokens) > serve.max_prompt_tokens:
    raise RequestError(400, "prompt_too_long", f"the prompt is {len(tokens)} tokens; this server "
                       f"takes at most serve.max_prompt_tokens={serve.max_prompt_tokens}.")
  markers = tokens.count(config.image_token_id)
  if markers != len(body.images):
    raise RequestError(400, "image_count_mismatch", f"the prompt has {markers} <image> marker(s) "
                       f"but {len(body.images)} image(s) came; give one image per <image>.")
  size = config.vision.image_size
  frames = [_decode(_image_bytes(ref, i, serve), i, size, serve)[None]
            for i, ref in enumerate(body.images)]
  images = np.stack(frames) if frames else np.zeros((0, 1, size, size, 3), np.uint8)
  return Prompt(tokens, images)


def max_new_tokens(body: GenerateBody, serve: ServeConfig) -> int:
  cap = serve.sampling.max_new_tokens
  if body.max_new_tokens is None:
    return cap
  if not 0 < body.max_new_tokens <= cap:
    raise RequestError(400, "max_new_tokens_out_of_range", f"max_new_tokens={body.max_new_tokens}; "
                       f"this server generates 1 to serve.sampling.max_new_tokens={cap}.")
  return body.max_new_tokens


def candidates(body: ScoreBody, tokenizer: Tokenizer, serve: ServeConfig) -> list[list[int]]:
  """The candidates' ids (`<EOC>` in a candidate is the token), each checked."""
  if not 0 < len(body.candidates) <= serve.max_candidates:
    raise RequestError(400, "candidate_count", f"{len(body.candidates)} candidates; give 1 to "
                       f"serve.max_candidates={serve.max_candidates}.")
  out = [tokenizer.encode_prompt(c) for c in body.candidates]
  for i, ids in enumerate(out):
    if not 0 < len(ids) <= serve.max_candidate_tokens:
      raise RequestError(400, "candidate_length", f"candidates[{i}] is {len(ids)} tokens; give 1 to "
                         f"serve.max_candidate_tokens={serve.max_candidate_tokens}.")
  return out


def _image_bytes(ref: ImageRef, i: int, serve: ServeConfig) -> bytes:
  if ref.base64 is not None:
    try:
      return base64.b64decode(ref.base64, validate=True)
    except binascii.Error as e:
      raise RequestError(400, "bad_base64", f"images[{i}].base64 is not base64: {e}.") from None
  if not serve.image_root:
    raise RequestError(403, "paths_refused", f"images[{i}].path: this server reads no image paths "
                       "(serve.image_root is not set); send the image as base64.")
  try:
    full = paths.under(serve.image_root, ref.path)
  except ValueError as e:  # A NUL byte.
    raise RequestError(400, "bad_path", f"images[{i}].path={ref.path!r}: {e}.") from None
  if full is None:
    raise RequestError(403, "path_outside_root", f"images[{i}].path={ref.path!r} resolves outside "
                       "serve.image_root; give a path inside it.")
  if not os.path.isfile(full):
    raise RequestError(404, "image_not_found", f"images[{i}].path={ref.path!r}: no such file under "
                       "serve.image_root.")
  if (size := os.path.getsize(full)) > serve.max_body_bytes:
    raise RequestError(400, "image_file_too_large", f"images[{i}].path={ref.path!r} is {size} "
                       f"bytes; this server reads at most serve.max_body_bytes={serve.max_body_bytes}.")
  with open(full, "rb") as f:
    return f.read()


def _decode(data: bytes, i: int, size: int, serve: ServeConfig) -> np.ndarray:
  try:
    return image_ops.decode(data, size, max_pixels=serve.max_pixels)
  except image_ops.BadImage as e:
    if e.reason == "enormous_image":
      raise RequestError(400, "too_many_pixels", f"images[{i}]: {e}; this server takes at most "
                         f"serve.max_pixels={serve.max_pixels}.") from None
    raise RequestError(400, "bad_image", f"images[{i}] is not an image we can decode ({e}).") from None
