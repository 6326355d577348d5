r"""The bundled demo corpus: all three kinds, built in seconds from sklearn's handwritten digits.

  python -m data_pipelines.demo --out DIR

Every image is one of scikit-learn's 8x8 digit scans (real handwriting, shipped with the package),
upscaled to 24 px, painted in one of four colours and placed at a random spot on a noisy 40 px
canvas. Captions name the colour and the digit ("a red seven"), which only the image tells, so a
model that looks at the images beats a text-only LM on the held-out loss.

* pairs: `<image>` + "a red seven".
* interleaved: pages of 2-4 digits, each image followed by a sentence about it ("This one is a red
  seven."), sometimes with an introduction and a closing remark.
* video: 6 frames (1 fps) of a digit moving left, right, up or down: "a red seven moving left".

Train and held-out ("eval") splits use disjoint digit scans (the first 1500 / the other 297).
Layout under DIR: tokenizer.model (512 pieces, trained on the corpus text plus the standard
library's docstrings so that 512 pieces exist), and one dataset directory per split
(data_pipelines/manifest.py): {train,eval}/manifest.json and
{train,eval}/{interleaved,pairs,video}/*.array_record; a dataset's path is DIR/<split>/<kind>.
"""

from __future__ import annotations

import os
import pydoc
import re
import time

import numpy as np
from absl import app, flags
from sklearn.datasets import load_digits
from tqdm import tqdm

from data_pipelines import images as image_ops
from data_pipelines import manifest, records, tokenizer

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240),
           "yellow": (235, 220, 40)}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MOVES = {"left": (0, -3), "right": (0, 3), "up": (-3, 0), "down": (3, 0)}
CANVAS, GLYPH, FRAMES = 40, 24, 6
SIZES = {"train": {"pairs": 3000, "interleaved": 800, "video": 400},
         "eval": {"pairs": 300, "interleaved": 100, "video": 60}}
INTROS = ("Here are some digits I drew.", "A page from my notebook.", "Look at these numbers.")
OUTROS = ("That is all for today.", "Thanks for reading.")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
TOKENIZER_DOC_MODULES = ("json", "argparse", "collections", "itertools", "functools", "pathlib",
                         "string", "random", "datetime", "textwrap")


def _glyph(scan: np.ndarray) -> np.ndarray:
  """[8, 8] in 0..16 -> [GLYPH, GLYPH] float in 0..1 (bilinear upscaling of the scan)."""
  from PIL import Image
  im = Image.fromarray((scan * (255 / 16)).astype(np.uint8)).resize((GLYPH, GLYPH), Image.BILINEAR)
  return np.asarray(im, np.float32) / 255


def _paint(rng, glyph: np.ndarray, colour: str, top: int, left: int) -> np.ndarray:
  """[CANVAS, CANVAS, 3] uint8: the glyph in `colour` at (top, left) on dark noise."""
  canvas = rng.normal(40, 12, (CANVAS, CANVAS, 3))
  patch = canvas[top:top + GLYPH, left:left + GLYPH]
  canvas[top:top + GLYPH, left:left + GLYPH] = (patch * (1 - glyph[..., None]) +
                                                np.array(COLOURS[colour]) * glyph[..., None])
  return np.clip(canvas, 0, 255).astype(np.uint8)


def _still(rng, scans, targets) -> tuple[bytes, str]:
  i = rng.integers(len(scans))
  colour = list(COLOURS)[rng.integers(len(COLOURS))]
  top, left = rng.integers(0, CANVAS - GLYPH + 1, 2)
  image = image_ops.encode_jpeg(_paint(rng, _glyph(scans[i]), colour, top, left))
  return image, f"a {colour} {DIGITS[targets[i]]}"


def _clip(rng, scans, targets) -> tuple[list[bytes], str]:
  i = rng.integers(len(scans))
  colour = list(COLOURS)[rng.integers(len(COLOURS))]
  move = list(MOVES)[rng.integers(len(MOVES))]
  dy, dx = MOVES[move]
  span = CANVAS - GLYPH
  top = (0 if dy > 0 else span) if dy else rng.integers(0, span + 1)
  left = (0 if dx > 0 else span) if dx else rng.integers(0, span + 1)
  glyph = _glyph(scans[i])
  frames = [image_ops.encode_jpeg(_paint(rng, glyph, colour, top + f * dy, left + f * dx))
            for f in range(FRAMES)]
  return frames, f"a {colour} {DIGITS[targets[i]]} moving {move}"


def _document(rng, scans, targets) -> tuple[list[tuple[str, bytes]], list[str]]:
  parts, texts = [], []
  if rng.random() < 0.5:
    texts.append(INTROS[rng.integers(len(INTROS))])
    parts.append(("text", texts[-1].encode()))
  for k in range(rng.integers(2, 5)):
    image, caption = _still(rng, scans, targets)
    texts.append(f"{'This one' if k else 'First'} is {caption}.")
    parts += [("image", image), ("text", texts[-1].encode())]
  if rng.random() < 0.3:
    texts.append(OUTROS[rng.integers(len(OUTROS))])
    parts.append(("text", texts[-1].encode()))
  return parts, texts


def build(out_dir: str, seed: int = 0) -> dict:
  """Writes the corpus; returns {"tokenizer": path, "train": {kind: dir}, "eval": {kind: dir}}."""
  digits = load_digits()
  split_scans = {"train": (digits.images[:1500], digits.target[:1500]),
                 "eval": (digits.images[1500:], digits.target[1500:])}
  rng = np.random.default_rng(seed)
  info, corpus_text = {"tokenizer": os.path.join(out_dir, "tokenizer.model")}, []
  for split, sizes in SIZES.items():
    scans, targets = split_scans[split]
    info[split], shards, split_dir = {}, {}, os.path.join(out_dir, split)
    for kind, count in sizes.items():
      kind_dir = os.path.join(split_dir, kind)
      with records.ShardWriter(kind_dir, kind, max_shard_bytes=1 << 20) as writer:
        for n in tqdm(range(count), desc=f"{split}/{kind}", leave=False):
          if kind == "pairs":
            image, caption = _still(rng, scans, targets)
            writer.write(records.pair(f"demo/{split}/{kind}/{n}", image, caption))
            corpus_text.append(caption)
          elif kind == "video":
            frames, caption = _clip(rng, scans, targets)
            writer.write(records.video(f"demo/{split}/{kind}/{n}", frames,
                                       list(range(len(frames))), caption))
            corpus_text.append(caption)
          else:
            parts, texts = _document(rng, scans, targets)
            writer.write(records.interleaved(f"demo/{split}/{kind}/{n}", parts))
            corpus_text.append(" ".join(texts))
      info[split][kind] = kind_dir
      shards[kind] = [os.path.relpath(p, split_dir) for p in writer.paths]
    manifest.write(split_dir, shards, {"written": sum(sizes.values())}, [],
                   f"python -m data_pipelines.demo --out {out_dir} --seed {seed}")
  docs = [pydoc.render_doc(name, renderer=pydoc.plaintext) for name in TOKENIZER_DOC_MODULES]
  # Default values render with their memory address ("<object object at 0x7f..>"): dropped, so
  # every build of the corpus trains the same tokenizer.
  lines = [_ADDRESS.sub("", line.strip()) for doc in docs for line in doc.splitlines() if line.strip()]
  tokenizer.train(corpus_text + lines, info["tokenizer"], vocab_size=512)
  return info


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f, start = flags.FLAGS, time.perf_counter()
  info = build(f.out, f.seed)
  seconds = time.perf_counter() - start
  print(f"demo corpus in {f.out} ({seconds:.1f} s): tokenizer {info['tokenizer']}")


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Directory to write the corpus into.", required=True)
  flags.DEFINE_integer("seed", 0, "Random seed of the corpus.")
  app.run(main)
