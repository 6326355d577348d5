"""The sentencepiece wrapper (special ids, decoding) and the training CLI."""

import pydoc
import subprocess
import sys

from data_pipelines.tokenizer import Tokenizer


def test_special_ids_follow_the_model_convention(tokenizer):
  assert tokenizer.vocab_size == 512  # The tiny preset's lm.vocab_size.
  assert (tokenizer.image_id, tokenizer.eoc_id) == (512, 513)
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


def test_decode_renders_special_tokens(tokenizer):
  ids = tokenizer.encode_prompt("<image>Output: a red seven<EOC>")
  assert ids[0] == tokenizer.image_id and ids[-1] == tokenizer.eoc_id
  assert tokenizer.decode(ids) == "<image>Output: a red seven<EOC>"
  # In plain text (web documents) a literal "<image>" is text, never the special token.
  plain = tokenizer.encode("see <image> here")
  assert tokenizer.image_id not in plain and tokenizer.decode(plain) == "see <image> here"


def test_non_ascii_text_round_trips_through_byte_fallback(tokenizer):
  assert tokenizer.decode(tokenizer.encode("Zürich ☃ 東京")) == "Zürich ☃ 東京"


def test_cli_trains_a_model_of_the_requested_size(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(pydoc.render_doc("collections", renderer=pydoc.plaintext) +
                    pydoc.render_doc("json", renderer=pydoc.plaintext))
  out = tmp_path / "tok.model"
  subprocess.run([sys.executable, "-m", "data_pipelines.tokenizer", "--corpus", str(corpus),
                  "--vocab_size", "400", "--out", str(out)], check=True, capture_output=True)
  tok = Tokenizer(str(out))
  assert tok.vocab_size == 400 and tok.image_id == 400 and tok.eoc_id == 401
