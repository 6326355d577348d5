r"""A sentencepiece tokenizer with Flamingo's two new tokens, and a CLI that trains a small model.

With V = the sentencepiece vocabulary size, `<image>` = V and `<EOC>` = V + 1 by default (as the
model's `FlamingoConfig.image_token_id`, `eoc_token_id` with `image_token = eoc_token = -1`). Any
`.model` file loads (e.g. LLaMA's); BOS / EOS come from it. A pretrained checkpoint's own ids
(IDEFICS: `<image>` = 32001 from its added tokens, EOS ends a chunk) come with
`Tokenizer.from_checkpoint(dir)` (`tokenizer.model` and the added-token json files next to the
weights; the rule is `weights.hf.hf_config.special_token_ids`).

  python -m data_pipelines.tokenizer --corpus corpus.txt --vocab_size 512 --out tok.model
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import sentencepiece as spm
from absl import app, flags

if TYPE_CHECKING:  # Plain tokenizer use imports no jax.
  from flamingo_jax.config import Config

IMAGE, EOC = "<image>", "<EOC>"
_SPECIAL = re.compile(f"({re.escape(IMAGE)}|{re.escape(EOC)})")


class Tokenizer:
  """Wraps a sentencepiece model file; `<image>` = `image_id` (default vocab_size), `<EOC>` =
  `eoc_id` (default vocab_size + 1): pass the model's `image_token_id` / `eoc_token_id`."""

  def __init__(self, model_path: str, image_id: int | None = None, eoc_id: int | None = None):
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.vocab_size()
    self.image_id = self.vocab_size if image_id is None else image_id
    self.eoc_id = self.vocab_size + 1 if eoc_id is None else eoc_id
    if self.image_id == self.eoc_id:
      raise ValueError(f"<image> and <EOC> both have id {self.image_id}; they must differ.")
    self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"{model_path} defines no BOS or EOS piece; train it with bos_id and eos_id "
                       "set.")
    # Padding never enters the loss (loss_mask 0); models without a pad piece pad with EOS.
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

  @classmethod
  def from_checkpoint(cls, checkpoint_dir: str) -> Tokenizer:
    """A pretrained checkpoint's tokenizer: its `tokenizer.model`, with `<image>` / `<EOC>` mapped
    to the ids its added-token files give them (`weights.hf.hf_config.special_token_ids`)."""
    from flamingo_jax.weights.hf import hf_config  # Here: plain tokenizer use needs no jax.
    path = os.path.join(checkpoint_dir, "tokenizer.model")
    if not os.path.exists(path):
      raise ValueError(f"{checkpoint_dir} has no tokenizer.model (the sentencepiece model); copy "
                       "it next to the weights.")
    sp = spm.SentencePieceProcessor(model_file=path)
    image_id, eoc_id = hf_config.special_token_ids(
        hf_config.checkpoint_token_ids(checkpoint_dir), sp.vocab_size(), sp.eos_id())
    return cls(path, image_id, eoc_id)

  @classmethod
  def of_run(cls, config: Config, path: str = "") -> Tokenizer:
    """The tokenizer a run trained with (its `data.tokenizer`), or the one at `path`, with the
    model's `<image>` / `<EOC>` ids."""
    path = path or config.data.tokenizer
    if not path:
      raise ValueError("The run trained on synthetic data and records no tokenizer: pass one.")
    return cls(path, config.model.image_token_id, config.model.eoc_token_id)

  def __getstate__(self):  # Grain sends transforms to worker processes: reload from the file there.
    return {"model_path": self.model_path, "image_id": self.image_id, "eoc_id": self.eoc_id}

  def __setstate__(self, state):
    self.__init__(state["model_path"], state["image_id"], state["eoc_id"])

  def encode(self, text: str) -> list[int]:
    """Plain text -> sentencepiece ids (no BOS/EOS). A literal "<image>" in the text stays text."""
    return self._sp.encode(text)

  def encode_prompt(self, prompt: str) -> list[int]:
    """Like `encode`, but the literal strings "<image>" and "<EOC>" become their special ids
    (for evaluation prompts such as "<image>Output: a cat<EOC>")."""
    ids = []
    for piece in _SPECIAL.split(prompt):
      if piece == IMAGE:
        ids.append(self.image_id)
      elif piece == EOC:
        ids.append(self.eoc_id)
      elif piece:
        ids.extend(self._sp.encode(piece))
    return ids

  def decode(self, ids) -> str:
    """Ids -> text; special ids are rendered as "<image>" / "<EOC>"."""
    out, run = [], []
    for i in map(int, ids):
      if i in (self.image_id, self.eoc_id):
        out.append(self._sp.decode(run))
        out.append(IMAGE if i == self.image_id else EOC)
        run = []
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return "".join(out)


def train(sentences, out_path: str, vocab_size: int = 512, user_symbols: tuple[str, ...] = ()):
  """Trains a unigram sentencepiece model with byte fallback (every string encodes) on an iterable
  of strings and writes it to `out_path` (a `.model` file); each of `user_symbols` is one piece
  wherever it occurs ("\u2581" marks a word start)."""
  with open(out_path, "wb") as f:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=f, vocab_size=vocab_size,
        model_type="unigram", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=3, hard_vocab_limit=True, minloglevel=2, num_threads=1,
        user_defined_symbols=list(user_symbols))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  with open(f.corpus, encoding="utf-8") as corpus:
    train((line.rstrip("\n") for line in corpus if line.strip()), f.out, f.vocab_size)
  print(f"wrote {f.out} ({Tokenizer(f.out).vocab_size} pieces)")


if __name__ == "__main__":
  flags.DEFINE_string("corpus", None, "UTF-8 text file, one sentence per line.", required=True)
  flags.DEFINE_integer("vocab_size", 512, "Pieces in the model (sentencepiece vocabulary size).")
  flags.DEFINE_string("out", None, "Path of the .model file to write.", required=True)
  app.run(main)
