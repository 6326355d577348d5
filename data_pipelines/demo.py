r"""The bundled demo corpus: all three kinds, built in seconds from sklearn's handwritten digits.

  python -m data_pipelines.demo --out DIR

Every image is one of scikit-learn's 8x8 digit scans (real handwriting, shipped with the package),
upscaled to 24 px, painted in one of four colours and placed on a noisy 40 px canvas (a still
within JITTER pixels of the centre; a clip's digit moves across it). Captions name the colour and
the digit ("a red seven"), which only the image tells, so a model that looks at the images beats a
text-only LM on the held-out loss.

* pairs: `<image>` + "a red seven".
* interleaved: pages of 2-4 digits, each image followed by a sentence about it: "This one is a red
  seven." (or, for a third of them, the digit alone: "This is a seven."), sometimes with an
  introduction and a closing remark.
* video: 6 frames (1 fps) of a digit moving left, right, up or down: "a red seven moving left".
* naming, naming_words and naming_images: pages that teach in-context binding, as web pages do at
  scale. Each page gives 2-4 of the colours fresh nonsense names, drawn from a generated pool
  (`nonsense_names`), and shows digits, each followed by its colour's name. A colour's first name is
  new; each later one can only be read back from the page, never memorised. naming_words spells the
  colour out ("<image>red Baux"), so the text alone binds (the text-only LM learns to read a name
  back by its colour word there); in naming_images the image is the only key ("<image>Baux"), as in
  the few-shot renaming task; both show 8-16 digits. naming (the quickstart's) shows 4-9, half its
  pages spelled out.

Train and held-out ("eval") splits use disjoint digit scans (the first 1500 / the other 297), and
disjoint name pools (`nonsense_names("train")` / `nonsense_names("heldout")`; the held-out names
appear in no training page and not in the tokenizer's text). Layout under DIR: tokenizer.model (512
pieces, trained on the training text plus the standard library's docstrings so that 512 pieces
exist), corpus.json (the corpus version), and dataset directories (data_pipelines/manifest.py):
{train,eval}/ with the kinds interleaved, pairs and video (a dataset's path is DIR/<split>/<kind>),
and <naming kind>/{train,eval}/ with the naming pages (kind interleaved; the dataset's path is
DIR/<naming kind>/<split>).
"""

from __future__ import annotations

import itertools
import json
import os
import pydoc
import re
import time
import zlib

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
CANVAS, GLYPH, FRAMES, JITTER = 40, 24, 6, 3
# Bumped whenever a build writes different pages or tokenizer pieces (2: two-piece names and the
# binding pages; 3: 12,000 pairs, four times as many), so that runs never mix a corpus and stages
# trained on an older one (`check_version`).
CORPUS_VERSION = 3
VERSION_FILE = "corpus.json"
# 12,000 pairs: about eight renders (colour, spot, noise) of each of the 1,500 training scans, the
# variety the vision tower needs to name the held-out writers' digits (docs/results.md).
SIZES = {"train": {"pairs": 12000, "interleaved": 800, "video": 400, "naming": 4000,
                   "naming_words": 4000, "naming_images": 4000},
         "eval": {"pairs": 300, "interleaved": 100, "video": 60, "naming": 200, "naming_words": 200,
                  "naming_images": 200}}
# The naming kinds: whether the colour is spelled out (None: in half the pages), digits per page.
NAMING = {"naming": (None, (4, 9)), "naming_words": (True, (8, 16)),
          "naming_images": (False, (8, 16))}
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


def _still_image(rng, scan: np.ndarray, colour: str) -> bytes:
  """The scan in `colour`, JPEG: near the centre of the canvas (JITTER pixels either way)."""
  top, left = (CANVAS - GLYPH) // 2 + rng.integers(-JITTER, JITTER + 1, 2)
  return image_ops.encode_jpeg(_paint(rng, _glyph(scan), colour, top, left))


def _still(rng, scans, targets) -> tuple[bytes, str]:
  i = rng.integers(len(scans))
  colour = list(COLOURS)[rng.integers(len(COLOURS))]
  return _still_image(rng, scans[i], colour), f"a {colour} {DIGITS[targets[i]]}"


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


# Nonsense names are two syllables, a capitalised onset + vowel ("Ba") and a vowel + coda ("ux"):
# every syllable is one tokenizer piece (`NAME_PIECES`, forced when the tokenizer is trained), so a
# held-out name is a new pairing of pieces the model knows, and its first piece mostly tells the
# page's names apart.
NAME_STARTS = tuple(o + v for o in "BDGJKMNPRSVWZ" for v in "aeiou")
NAME_ENDS = tuple(v + c for v in "aeiou" for c in "kxz")
NAME_PIECES = tuple("\u2581" + start for start in NAME_STARTS) + NAME_ENDS


def nonsense_names(pool: str) -> tuple[str, ...]:
  """The pool's two-syllable nonsense names ("Baux", "Mizek"), sorted: every start and end above
  (975 names), split by a hash into "train" (about 3/4) and "heldout" (the rest; never in a
  training page)."""
  if pool not in ("train", "heldout"):
    raise ValueError(f"Unknown name pool {pool!r}; use 'train' or 'heldout'.")
  names = (start + end for start, end in itertools.product(NAME_STARTS, NAME_ENDS))
  return tuple(sorted(n for n in names if (zlib.crc32(n.encode()) % 4 == 0) == (pool == "heldout")))


def _naming_page(rng, scans, names, kind: str) -> tuple[list[tuple[str, bytes]], list[str]]:
  """A page of a NAMING kind binding fresh names to 2-4 colours: every digit followed by its colour's
  name (after the colour word where spelled out), at least one name asked back."""
  spelled, (fewest, most) = NAMING[kind]
  colours = list(rng.choice(list(COLOURS), rng.integers(2, 5), replace=False))
  named = dict(zip(colours, (names[i] for i in rng.choice(len(names), len(colours), replace=False))))
  count = rng.integers(max(fewest, len(colours) + 1), most + 1)
  order = colours + [colours[i] for i in rng.integers(len(colours), size=count - len(colours))]
  if spelled is None:
    spelled = rng.random() < 0.5
  parts, texts = [], []
  for colour in rng.permutation(order):
    image = _still_image(rng, scans[rng.integers(len(scans))], colour)
    texts.append(f"{colour} {named[colour]}" if spelled else named[colour])
    parts += [("image", image), ("text", texts[-1].encode())]
  return parts, texts


def _document(rng, scans, targets) -> tuple[list[tuple[str, bytes]], list[str]]:
  parts, texts = [], []
  if rng.random() < 0.5:
    texts.append(INTROS[rng.integers(len(INTROS))])
    parts.append(("text", texts[-1].encode()))
  for k in range(rng.integers(2, 5)):
    image, caption = _still(rng, scans, targets)
    digit_only = rng.random() < 1 / 3
    texts.append(f"This is a {caption.split()[-1]}." if digit_only else
                 f"{'This one' if k else 'First'} is {caption}.")
    parts += [("image", image), ("text", texts[-1].encode())]
  if rng.random() < 0.3:
    texts.append(OUTROS[rng.integers(len(OUTROS))])
    parts.append(("text", texts[-1].encode()))
  return parts, texts


def _record(kind: str, key: str, rng, scans, targets, names) -> tuple[bytes, str]:
  """One record of `kind` (a SIZES key) and its text for the tokenizer."""
  if kind == "pairs":
    image, caption = _still(rng, scans, targets)
    return records.pair(key, image, caption), caption
  if kind == "video":
    frames, caption = _clip(rng, scans, targets)
    return records.video(key, frames, list(range(len(frames))), caption), caption
  parts, texts = (_naming_page(rng, scans, names, kind) if kind in NAMING else
                  _document(rng, scans, targets))
  return records.interleaved(key, parts), " ".join(texts)


def _write_dataset(dataset_dir: str, kinds: dict[str, int], make, command: str) -> dict[str, str]:
  """Writes the records `make(kind, n)` for n < count of every kind into dataset_dir/<record kind>/,
  then the manifest; returns {kind: its directory}."""
  dirs, shards = {}, {}
  for kind, count in kinds.items():
    record_kind = "interleaved" if kind in NAMING else kind
    kind_dir = os.path.join(dataset_dir, record_kind)
    with records.ShardWriter(kind_dir, record_kind, max_shard_bytes=1 << 20) as writer:
      for n in tqdm(range(count), desc=f"{dataset_dir}/{kind}", leave=False):
        writer.write(make(kind, n))
    dirs[kind] = kind_dir
    shards[record_kind] = [os.path.relpath(p, dataset_dir) for p in writer.paths]
  manifest.write(dataset_dir, shards, {"written": sum(kinds.values())}, [], command)
  return dirs


def build(out_dir: str, seed: int = 0, sizes: dict[str, dict[str, int]] = SIZES) -> dict:
  """Writes the corpus (`sizes`: records per split and kind, as SIZES); returns {"tokenizer": path,
  "train": {kind: dir}, "eval": {kind: dir}} with kinds interleaved, pairs, video and the NAMING
  kinds (their dataset directories)."""
  digits = load_digits()
  split_scans = {"train": (digits.images[:1500], digits.target[:1500]),
                 "eval": (digits.images[1500:], digits.target[1500:])}
  split_names = {"train": nonsense_names("train"), "eval": nonsense_names("heldout")}
  command = f"python -m data_pipelines.demo --out {out_dir} --seed {seed}"
  rng = np.random.default_rng(seed)
  info, train_text = {"tokenizer": os.path.join(out_dir, "tokenizer.model")}, []
  for split, counts in sizes.items():
    args = (*split_scans[split], split_names[split])

    def make(kind, n):
      record, text = _record(kind, f"demo/{split}/{kind}/{n}", rng, *args)
      if split == "train":  # Held-out text (its names above all) stays out of the tokenizer.
        train_text.append(text)
      return record

    info[split] = _write_dataset(os.path.join(out_dir, split),
                                 {k: v for k, v in counts.items() if k not in NAMING}, make, command)
    for kind in NAMING:
      info[split][kind] = os.path.join(out_dir, kind, split)
      _write_dataset(info[split][kind], {kind: counts[kind]}, make, command)
  docs = [pydoc.render_doc(name, renderer=pydoc.plaintext) for name in TOKENIZER_DOC_MODULES]
  # Default values render with their memory address ("<object object at 0x7f..>"): dropped, so
  # every build of the corpus trains the same tokenizer.
  lines = [_ADDRESS.sub("", line.strip()) for doc in docs for line in doc.splitlines() if line.strip()]
  tokenizer.train(train_text + lines, info["tokenizer"], vocab_size=512,
                  user_symbols=NAME_PIECES)
  version_path = os.path.join(out_dir, VERSION_FILE)
  with open(version_path + ".tmp", "w") as f:
    json.dump({"version": CORPUS_VERSION, "command": command}, f)
  os.replace(version_path + ".tmp", version_path)
  return info


def check_version(root: str) -> None:
  """Raises ValueError naming `root` when its corpus was built by another version of this module."""
  try:
    with open(os.path.join(root, VERSION_FILE)) as f:
      found = json.load(f).get("version")
  except (OSError, ValueError):
    found = None
  if found != CORPUS_VERSION:
    raise ValueError(
        f"the demo corpus in {root} is version {found or 'unknown (older)'}, this code builds "
        f"version {CORPUS_VERSION} (different names and tokenizer pieces); move {root} away (and "
        "every run trained on it), and the quickstart builds the current corpus there.")


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
