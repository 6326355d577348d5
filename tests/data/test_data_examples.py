"""Record -> example: hand-checked token layout, media indices, <EOC> placement, image cap, the
loss-mask rule, and every bad-input rule with its counter."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines import records
from data_pipelines.examples import COUNTERS, ExampleSpec, ToExample
from tests.data.builders import jpeg

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]


def solid(i, size=(48, 40)) -> bytes:
  """A PNG of a solid colour COLOURS[i], so an output image slot tells which input it came from."""
  buf = io.BytesIO()
  Image.new("RGB", size, COLOURS[i]).save(buf, format="PNG")
  return buf.getvalue()


def slot_colour(image):
  """[F, H, W, 3] -> index into COLOURS of its mean colour."""
  mean = image.reshape(-1, 3).mean(0)
  return int(np.argmin([np.abs(mean - c).sum() for c in COLOURS]))


def run(tokenizer, record, seed=0, **spec):
  defaults = dict(kind=record.kind, seq_len=48, max_images=3, num_frames=1, image_size=16, train=False)
  transform = ToExample(ExampleSpec(**(defaults | spec)), tokenizer)
  out = transform.random_map(records.encode_record(record), np.random.default_rng(seed))
  counts = {name: int(v) for name, v in zip(COUNTERS, out.pop("counts")) if v}
  return out, counts


def doc(*items):
  """doc("A", 0, "B") -> an interleaved record: strings are text, ints are solid(i) images."""
  return records.interleaved("test", [("text", i.encode()) if isinstance(i, str) else
                                      ("image", i if isinstance(i, bytes) else solid(i))
                                      for i in items])


def test_interleaved_layout_media_index_and_loss_mask(tokenizer):
  tok = tokenizer
  a, b, c = tok.encode("Look here."), tok.encode("A red cat."), tok.encode("A green dog.")
  out, counts = run(tok, doc("Look here.", 0, "A red cat.", 1, "A green dog."))
  expected = [tok.bos_id, *a, tok.eoc_id, tok.image_id, *b, tok.eoc_id, tok.image_id, *c,
              tok.eoc_id, tok.eos_id]
  n = len(expected)
  assert out["tokens"][:n].tolist() == expected
  assert (out["tokens"][n:] == tok.pad_id).all()
  assert out["labels"][:n - 1].tolist() == expected[1:]
  first, second = 2 + len(a), 4 + len(a) + len(b)  # Positions of the two <image> tokens.
  phi = [0] * first + [1] * (second - first) + [2] * (48 - second)
  assert out["phi"].tolist() == phi
  # No image before the first <image>; the <EOC> before an <image> predicts it (not trained); the
  # final <EOC> predicts <EOS> (trained); <EOS> and padding have nothing to predict.
  mask = [0] * first + [1] * (second - 1 - first) + [0] + [1] * (n - 1 - second) + [0] * (49 - n)
  assert out["loss_mask"].tolist() == mask
  assert out["image_mask"].tolist() == [True, True, False]
  assert [slot_colour(out["images"][i]) for i in range(2)] == [0, 1]
  assert not out["images"][2].any()
  assert counts == {"records": 1}


def test_p_next_ties_text_to_the_following_image(tokenizer):
  tok = tokenizer
  a, b = tok.encode("Look here."), tok.encode("A red cat.")
  out, _ = run(tok, doc("Look here.", 0, "A red cat.", 1, "End."), train=True, p_next=1.0)
  first, second = 2 + len(a), 4 + len(a) + len(b)
  assert out["phi"][:second + 1].tolist() == [1] * (first + 1) + [2] * (second - first)
  assert (out["phi"][second:] == 2).all()  # After the last image: the last image.
  # Text before the first image is trained under p_next; its <EOC> (predicting <image>) is not.
  assert out["loss_mask"][:first - 1].all() and out["loss_mask"][first - 1] == 0


def test_no_eoc_before_an_image_that_opens_the_document(tokenizer):
  tok = tokenizer
  out, _ = run(tok, doc(0, "A red cat."))
  assert out["tokens"][:3].tolist() == [tok.bos_id, tok.image_id, tok.encode("A red cat.")[0]]


def test_image_cap_ends_the_window_before_the_extra_image(tokenizer):
  tok = tokenizer
  out, counts = run(tok, doc("a", 0, "b", 1, "c", 2, "d", 3, "e"), max_images=2)
  expected = [tok.bos_id, *tok.encode("a"), tok.eoc_id, tok.image_id, *tok.encode("b"), tok.eoc_id,
              tok.image_id, *tok.encode("c"), tok.eoc_id]
  n = len(expected)
  assert out["tokens"][:n].tolist() == expected and (out["tokens"][n:] == tok.pad_id).all()
  assert out["labels"][n - 1] == tok.image_id and out["loss_mask"][n - 1] == 0
  assert out["image_mask"].tolist() == [True, True]
  assert (out["tokens"] == tok.image_id).sum() == 2
  assert counts["images_over_cap"] == 1


def test_training_window_is_a_slice_of_the_document_with_its_next_tokens(tokenizer):
  tok = tokenizer
  words = " ".join(f"w{i}" for i in range(40))
  record = doc(words, 0, words, 1, words, 2, words)
  full, _ = run(tok, record, seq_len=512, max_images=3)
  n = int((full["tokens"] != tok.pad_id).sum())
  full_tokens = full["tokens"][:n].tolist()
  starts = set()
  for seed in range(6):
    out, _ = run(tok, record, seed=seed, seq_len=32, train=True, max_images=3)
    window = out["tokens"].tolist()
    start = next(s for s in range(n) if full_tokens[s:s + 32] == window)
    starts.add(start)
    assert out["labels"].tolist() == (full_tokens[start + 1:start + 33] + [tok.pad_id] * 32)[:32]
    again, _ = run(tok, record, seed=seed, seq_len=32, train=True, max_images=3)
    assert all(np.array_equal(out[k], again[k]) for k in out)  # Deterministic for the rng.
  assert len(starts) > 1


def test_pair_layout(tokenizer):
  tok = tokenizer
  out, counts = run(tok, records.pair("p", solid(2), "a blue square"), seq_len=16, max_images=1)
  cap = tok.encode("a blue square")
  expected = [tok.bos_id, tok.image_id, *cap, tok.eoc_id, tok.eos_id]
  assert out["tokens"][:len(expected)].tolist() == expected
  assert out["loss_mask"].tolist() == [0.0] + [1.0] * (len(expected) - 2) + [0.0] * (17 - len(expected))
  assert out["phi"].tolist() == [0] + [1] * 15
  assert out["images"].shape == (1, 1, 16, 16, 3) and slot_colour(out["images"][0]) == 2


def test_pair_caption_is_truncated_to_fit(tokenizer):
  tok = tokenizer
  out, counts = run(tok, records.pair("p", solid(0), " ".join(["word"] * 50)), seq_len=12,
                    max_images=1)
  assert out["tokens"][-2:].tolist() == [tok.eoc_id, tok.eos_id]
  assert counts["text_truncated"] == 1


def test_video_keeps_consecutive_frames_in_time_order(tokenizer):
  frames = [solid(i) for i in range(5)]
  record = records.video("v", frames[::-1], [4, 3, 2, 1, 0], "colours")  # Stored out of order.
  out, counts = run(tokenizer, record, seq_len=12, max_images=1, num_frames=3)
  assert out["images"].shape == (1, 3, 16, 16, 3)
  assert [slot_colour(out["images"][0, f:f + 1]) for f in range(3)] == [1, 2, 3]  # Centred.
  assert counts == {"records": 1}


@pytest.fixture(scope="module")
def bomb():
  """A 9000 x 9000 PNG (81 Mpixel, 80 kB on disk): over the 64 Mpixel limit."""
  buf = io.BytesIO()
  Image.new("L", (9000, 9000)).save(buf, format="PNG")
  return buf.getvalue()


@pytest.mark.parametrize("bad, reason", [
    (b"", "empty_image"), (b"this is not an image", "corrupt_image"),
    ("truncated", "corrupt_image"), ("bomb", "enormous_image")])
def test_bad_image_is_dropped_from_a_document(tokenizer, bomb, bad, reason):
  bad = {"truncated": jpeg(5)[:300], "bomb": bomb}.get(bad, bad)
  out, counts = run(tokenizer, doc("a", 0, "b", bad, "c", 2, "d"))
  assert counts[reason] == 1 and "skipped" not in counts
  assert (out["tokens"] == tokenizer.image_id).sum() == 2
  assert [slot_colour(out["images"][i]) for i in range(2)] == [0, 2]
  assert out["image_mask"].tolist() == [True, True, False]
  assert out["phi"].max() == 2


@pytest.mark.parametrize("bad, reason", [(b"", "empty_image"), (b"garbage", "corrupt_image"),
                                         ("bomb", "enormous_image")])
def test_bad_image_skips_a_pair(tokenizer, bomb, bad, reason):
  out, counts = run(tokenizer, records.pair("p", bomb if bad == "bomb" else bad, "cap"),
                    seq_len=12, max_images=1)
  assert out == {} and counts == {"records": 1, "skipped": 1, reason: 1}


def test_non_utf8_text(tokenizer):
  out, counts = run(tokenizer, doc("kept", 0, "b", 1))  # Reference without the bad segment.
  bad_doc = records.interleaved("d", [("text", b"kept"), ("image", solid(0)),
                                      ("text", b"caf\xe9 \xff"), ("text", b"b"), ("image", solid(1))])
  out_bad, counts_bad = run(tokenizer, bad_doc)
  assert counts_bad == {"records": 1, "non_utf8_text": 1}
  assert np.array_equal(out["tokens"], out_bad["tokens"])
  out, counts = run(tokenizer, records.pair("p", solid(0), b"caf\xe9"), seq_len=12, max_images=1)
  assert out == {} and counts == {"records": 1, "skipped": 1, "non_utf8_text": 1}


@pytest.mark.parametrize("record, reason", [
    (doc("only text", "more text"), "no_images"),
    (doc("text", b"corrupt"), "no_images"),
    (doc(0, 1), "no_text"),
    (doc(0, "   ", 1), "no_text"),
    (records.video("v", [solid(0), solid(1)], [0, 1], "too short"), "too_few_frames"),
    (records.video("v", [solid(0), b"bad", solid(1)], [0, 1, 2], "c"), "too_few_frames"),
    (records.pair("p", solid(0), "  "), "no_text"),
])
def test_records_skipped_by_rule(tokenizer, record, reason):
  out, counts = run(tokenizer, record, seq_len=16, max_images=3 if record.kind == "interleaved" else 1,
                    num_frames=3 if record.kind == "video" else 1)
  assert out == {} and counts["skipped"] == 1 and counts[reason] == 1


def test_bad_video_frame_is_dropped(tokenizer):
  frames = [solid(0), b"bad", solid(1), solid(2), solid(3)]
  out, counts = run(tokenizer, records.video("v", frames, [0, 1, 2, 3, 4], "c"), seq_len=12,
                    max_images=1, num_frames=4)
  assert counts == {"records": 1, "corrupt_image": 1}
  assert [slot_colour(out["images"][0, f:f + 1]) for f in range(4)] == [0, 1, 2, 3]


def test_malformed_record_is_skipped(tokenizer):
  spec = ExampleSpec("pairs", 12, 1, 1, 16, train=False)
  out = ToExample(spec, tokenizer).random_map(b"garbage bytes", np.random.default_rng(0))
  counts = dict(zip(COUNTERS, out.pop("counts").tolist()))
  assert out == {} and counts["malformed_record"] == 1 and counts["skipped"] == 1


def test_training_flips_half_the_images_unless_flips_are_off(tokenizer):
  pixels = np.zeros((40, 40, 3), np.uint8)
  pixels[:, :20] = COLOURS[0]
  pixels[:, 20:] = COLOURS[2]
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  record = records.pair("p", buf.getvalue(), "red left, blue right")

  def flipped(seed, random_flip):
    out, _ = run(tokenizer, record, seed=seed, seq_len=16, max_images=1, train=True,
                 random_flip=random_flip)
    left = out["images"][0, 0, :, :4].reshape(-1, 3).mean(0)
    return left[2] > left[0]  # Blue on the left.
  assert 0 < sum(flipped(seed, True) for seed in range(16)) < 16
  assert not any(flipped(seed, False) for seed in range(16))


def test_text_only_lm_stage_leaves_images_undecoded(tokenizer):
  """decode_images=False (the LM stage): the same tokens, labels, mask and phi, image slots zero but
  marked, and nothing decoded (an undecodable image goes unnoticed)."""
  record = doc("Look here.", 0, "A red cat.", b"not an image", "A green dog.")
  decoded, decoded_counts = run(tokenizer, record)
  text_only, counts = run(tokenizer, record, decode_images=False)
  assert decoded_counts == {"records": 1, "corrupt_image": 1}  # Dropped with its <image>.
  assert counts == {"records": 1}  # Kept: its <image> stays in the text.
  assert text_only["image_mask"].tolist() == [True, True, False]
  assert not text_only["images"].any()
  image = tokenizer.image_id
  assert text_only["tokens"].tolist().count(image) == 2 and decoded["tokens"].tolist().count(image) == 1
  clean = doc("Look here.", 0, "A red cat.", 1, "A green dog.")
  with_images, _ = run(tokenizer, clean)
  without, _ = run(tokenizer, clean, decode_images=False)
  for key in ("tokens", "labels", "loss_mask", "phi", "image_mask"):
    np.testing.assert_array_equal(with_images[key], without[key])
