"""Few-shot prompts: shot selection, prompt text, and the padded model inputs of a batch of queries.

A task's `prompt` template (experiments/evaluation.py; FLAMINGO.md's formats) renders one example,
e.g. "<image>Question: {question} Answer: {answer}<EOC>". A prompt is

  <BOS> shot_1 ... shot_k query        (the training layout: `<EOC>` before every `<image>`)

where each shot is the template filled with one of the example's answers, and the query is the
template cut just before "{answer}" (trailing spaces dropped): "<image>Question: ... Answer:". The
model continues it (generation) or candidates " yes<EOC>" are scored after it.

* Shots: `random` draws k support examples (seeded per query) in random order; `rices` takes the k most
  similar by frozen vision features (rices.py), most similar last.
* 0 shots: the paper's "2 text-only examples": two random support examples rendered with `<image>`
  removed (no image), then the query.
* `order_permutations(k, n, rng)`: the orders of prompt ensembling (scoring tasks).

Model inputs (`pad_batch`): tokens [B, T] int32 LEFT padded, prompt_mask [B, T] bool, images uint8
[B, N, 1, H, W, 3] with row b's k-th `<image>` token seeing images[b, k-1] (zeros in unused slots).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

import numpy as np

from data_pipelines.eval_sets import EvalExample, load_image
from data_pipelines.tokenizer import IMAGE, Tokenizer
from flamingo_jax.config.evaluation import ANSWER

@dataclasses.dataclass(frozen=True)
class Prompt:
  """One query's prompt: token ids and its images in `<image>` order ([H, W, 3] uint8 each)."""
  ids: tuple[int, ...]
  images: tuple[np.ndarray, ...]


def render_shot(template: str, example: EvalExample, answer: str, with_image: bool = True) -> str:
  """The template filled with `answer` (and the example's question); without its `<image>` when
  `with_image` is False (the 0-shot text-only examples)."""
  text = template.replace(ANSWER, answer).replace("{question}", example.question)
  return text if with_image else text.replace(IMAGE, "")


def render_query(template: str, example: EvalExample) -> str:
  """The template up to "{answer}", trailing spaces removed: what the model continues."""
  return template.split(ANSWER)[0].replace("{question}", example.question).rstrip()


def random_shots(num_queries: int, support_size: int, num_shots: int, seed: int) -> np.ndarray:
  """[Q, k] support indices: k distinct random examples per query (seeded per query), random order."""
  if num_shots > support_size:
    raise ValueError(f"{num_shots} shots need at least as many support examples, got {support_size}; "
                     "raise the task's support_size or lower config.shots.")
  return np.stack([np.random.default_rng([seed, q]).choice(support_size, num_shots, replace=False)
                   for q in range(num_queries)]).reshape(num_queries, num_shots)


def order_permutations(num_shots: int, count: int, seed: int) -> list[tuple[int, ...]]:
  """`count` distinct orders of k shots (the identity first), for prompt ensembling; fewer when k!
  is smaller than `count`."""
  if num_shots <= 4:  # Small enough to enumerate: take distinct ones in a seeded order.
    every = list(itertools.permutations(range(num_shots)))
    rng = np.random.default_rng(seed)
    rest = [every[i] for i in rng.permutation(len(every)) if every[i] != every[0]]
    return [every[0]] + rest[:count - 1]
  rng, orders = np.random.default_rng(seed), [tuple(range(num_shots))]
  while len(orders) < count:
    order = tuple(int(i) for i in rng.permutation(num_shots))
    if order not in orders:
      orders.append(order)
  return orders


def build_prompt(tokenizer: Tokenizer, template: str, query: EvalExample,
                 shots: Sequence[tuple[EvalExample, str]], image_size: int,
                 text_only: bool = False,
                 load: Callable[[EvalExample, int], np.ndarray] = load_image) -> Prompt:
  """Token ids and images of one prompt: BOS, the shots (example, answer) in the given order (text
  only, without their images, when `text_only`), then the query. `load(example, image_size)`
  decodes an image (`eval_data.load_image`; a memoised one when prompts share images)."""
  text = "".join(render_shot(template, ex, answer, with_image=not text_only) for ex, answer in shots)
  text += render_query(template, query)
  images = ([] if text_only else [load(ex, image_size) for ex, _ in shots])
  images.append(load(query, image_size))
  ids = (tokenizer.bos_id, *tokenizer.encode_prompt(text))
  if ids.count(tokenizer.image_id) != len(images):
    raise ValueError(f"The prompt holds {ids.count(tokenizer.image_id)} <image> tokens for "
                     f"{len(images)} images; a question or answer contains the literal '<image>'.")
  return Prompt(ids, tuple(images))


def pad_batch(prompts: Sequence[Prompt], pad_id: int, image_size: int, pad_to_multiple: int = 32,
              num_images: int | None = None):
  """Prompts -> (tokens [B, T] int32 left padded with `pad_id`, prompt_mask [B, T] bool, images
  uint8 [B, N, 1, H, W, 3]). T is the longest prompt rounded up to `pad_to_multiple` (fewer distinct
  shapes, fewer compilations); N is `num_images` or the most images of any prompt."""
  length = max(len(p.ids) for p in prompts)
  length = -(-length // pad_to_multiple) * pad_to_multiple
  num_images = num_images or max(len(p.images) for p in prompts)
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  images = np.zeros((len(prompts), num_images, 1, image_size, image_size, 3), np.uint8)
  for b, prompt in enumerate(prompts):
    tokens[b, length - len(prompt.ids):] = prompt.ids
    mask[b, length - len(prompt.ids):] = True
    for k, image in enumerate(prompt.images):
      images[b, k, 0] = image
  return tokens, mask, images
