r"""Data-pipeline benchmark: decode + resize rate, per-kind example rates, and the demo pipeline's
rate against the rate the `tiny` training step consumes.

  python benchmarks/data.py [--seconds 3]

Prints JSON lines {"benchmark", "metric", "value", "unit", ...}.

* images_per_s_per_core_{224,320}: `images.decode` with a training augmentation draw on JPEGs of
  500x375 (crops of scikit-learn's two sample photos, quality 90), one process, one thread.
* interleaved_{docs,images}_per_s_per_worker_{224,320}: `ToExample` (tokenise, window of 256 tokens, at
  most 5 images, decode, augment, media index) on documents of 4 such JPEGs, each after ~25 words of text, in
  one process: what one grain worker process delivers.
* pairs_per_s_per_worker_224: the same for image-text pairs (32 tokens).
* demo pipeline: steps/s of `build_mixture` on the demo corpus (`experiments/flamingo.py` demo_data) (one batch of each dataset per step,
  image_size 32) with 0 and 2 worker processes, after warm-up.
* tiny_step_per_s: a jitted value_and_grad over the `tiny` model's trainable tree, summed over the
  three demo batches of one step (as the accumulation recipe does), as benchmarks/model.py times it.
* pipeline_over_tiny_step: demo pipeline steps/s (2 workers) / tiny training steps/s (target >= 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from data_pipelines import demo, records  # noqa: E402
from data_pipelines import images as image_ops  # noqa: E402
from data_pipelines.examples import ExampleSpec, ToExample  # noqa: E402
from data_pipelines.mixture import build_mixture  # noqa: E402
from data_pipelines.tokenizer import Tokenizer  # noqa: E402
from experiments.flamingo import demo_data  # noqa: E402
from flamingo_jax.config import DataConfig, FlamingoConfig  # noqa: E402


def emit(metric: str, value: float, unit: str, **extra):
  print(json.dumps({"benchmark": "data", "metric": metric, "value": round(float(value), 3),
                    "unit": unit, **extra}), flush=True)


def rate(fn, seconds: float) -> float:
  """Calls of fn per second, over at least `seconds` (after one warm-up call)."""
  fn()
  calls, start = 0, time.perf_counter()
  while (elapsed := time.perf_counter() - start) < seconds:
    fn()
    calls += 1
  return calls / elapsed


def source_jpegs(count: int = 8) -> list[bytes]:
  """JPEGs of 500x375 cropped from scikit-learn's sample photos (427x640 each)."""
  from PIL import Image
  from sklearn.datasets import load_sample_images
  rng = np.random.default_rng(0)
  photos = load_sample_images().images
  out = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top = rng.integers(0, photo.shape[0] - 375 + 1)
    crop = photo[top:top + 375, :]
    out.append(image_ops.encode_jpeg(np.asarray(Image.fromarray(crop).resize((500, 375)))))
  return out


def bench_decode(jpegs, seconds):
  rng = np.random.default_rng(0)
  for size in (224, 320):
    i = iter(range(10**9))
    per_s = rate(lambda: image_ops.decode(jpegs[next(i) % len(jpegs)], size,
                                          image_ops.Augmentation.draw(rng)), seconds)
    emit(f"images_per_s_per_core_{size}", per_s, "images/s", target=300 if size == 224 else None,
         source="JPEG 500x375 q90", augmentation="train")


def bench_examples(jpegs, tokenizer, seconds):
  words = ("The photo shows a street with people walking past old shops and a red bus waiting at "
           "the corner while the sun sets behind the hills. ")
  document = records.encode_record(records.interleaved("bench", [
      part for k in range(4) for part in (("text", words.encode()), ("image", jpegs[k]))]))
  pair = records.encode_record(records.pair("bench", jpegs[0], "a red bus waiting at the corner"))
  rng = np.random.default_rng(0)
  for size in (224, 320):
    transform = ToExample(ExampleSpec("interleaved", 256, 5, 1, size, p_next=0.5), tokenizer)
    example = transform.random_map(document, rng)
    images_per_doc = int(example["image_mask"].sum())
    per_s = rate(lambda: transform.random_map(document, rng), seconds)
    emit(f"interleaved_docs_per_s_per_worker_{size}", per_s, "docs/s", images_per_doc=images_per_doc)
    emit(f"interleaved_images_per_s_per_worker_{size}", per_s * images_per_doc, "images/s")
  transform = ToExample(ExampleSpec("pairs", 32, 1, 1, 224), tokenizer)
  emit("pairs_per_s_per_worker_224", rate(lambda: transform.random_map(pair, rng), seconds), "pairs/s")


def bench_pipeline(root, tokenizer, seconds) -> float:
  """Demo mixture steps/s with 0 and 2 workers; returns the 2-worker figure."""
  config = DataConfig.from_dict(demo_data(root))
  examples_per_step = sum(d.batch_size for d in config.datasets.values())
  for workers in (0, 2):
    config = config.replace({"num_workers": workers})
    mixture = build_mixture(config, image_size=32, tokenizer=tokenizer)
    for _ in range(5):  # Warm-up: worker start, first prefetch.
      next(mixture)
    per_s = rate(lambda: next(mixture), seconds)
    mixture.close()
    emit(f"demo_pipeline_steps_per_s_workers_{workers}", per_s, "steps/s",
         examples_per_s=round(per_s * examples_per_step, 1))
  return per_s


def bench_tiny_step(root, tokenizer, seconds) -> float:
  import flax.linen as nn
  import jax

  from experiments import flamingo as presets
  from flamingo_jax.models.flamingo import Flamingo
  from flamingo_jax.training.losses import next_token_loss
  from flamingo_jax.weights import tree as ptree

  config = FlamingoConfig.from_dict(presets.get_config("tiny").model)
  model = Flamingo(config)
  data_config = DataConfig.from_dict(demo_data(root))
  step = next(build_mixture(data_config, image_size=config.vision.image_size, tokenizer=tokenizer))
  first = step["interleaved"]
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), first["tokens"], first["images"],
                                             first["phi"])["params"])
  frozen, trainable = ptree.split(params)

  def loss_fn(trainable, frozen, batch):
    logits = model.apply({"params": ptree.merge(frozen, trainable)}, batch["tokens"], batch["images"],
                         batch["phi"])
    return next_token_loss(logits, batch["labels"], batch["loss_mask"])
  grad_fn = jax.jit(jax.value_and_grad(loss_fn))

  def train_step():
    jax.block_until_ready([grad_fn(trainable, frozen, batch) for batch in step.values()])
  per_s = rate(train_step, seconds)
  emit("tiny_step_per_s", per_s, "steps/s",
       examples_per_s=round(per_s * sum(d.batch_size for d in data_config.datasets.values()), 1),
       shapes={n: list(b["tokens"].shape) + list(b["images"].shape[1:3]) for n, b in step.items()})
  return per_s


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--seconds", type=float, default=3.0, help="Timing window per figure.")
  args = parser.parse_args()
  emit("environment", 0, "info", cpus=os.cpu_count())
  jpegs = source_jpegs()
  with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    info = demo.build(root)
    emit("demo_build_s", time.perf_counter() - start, "s")
    tokenizer = Tokenizer(info["tokenizer"])
    bench_decode(jpegs, args.seconds)
    bench_examples(jpegs, tokenizer, args.seconds)
    pipeline = bench_pipeline(root, tokenizer, args.seconds)
    tiny = bench_tiny_step(root, tokenizer, args.seconds)
    emit("pipeline_over_tiny_step", pipeline / tiny, "ratio", target=3.0)


if __name__ == "__main__":
  main()
