"""video.sample_1fps on media made here with PyAV and PIL: MP4 / WebM / MKV / AVI and animated GIF /
WebP / APNG give the frame shown at each whole second; bad bytes, stills and oversized frames give
BadVideo with their reason, never another exception."""

import io
import re

import av
import numpy as np
import pytest
from PIL import Image

from data_pipelines import video
from tests.data import builders
from tests.data.builders import encoded_video, mean_colours

COLOURS = builders.COLOURS[:4]  # One per second.
LIMITS = dict(max_pixels=64_000_000, max_frames=16)


def encode_video(container: str, codec: str, seconds=3.5, fps=10, size=32) -> bytes:
  """builders.encoded_video, skipping the test where this PyAV wheel lacks the encoder."""
  if codec not in av.codecs_available:
    pytest.skip(f"this PyAV wheel has no {codec} encoder (av.codecs_available)")
  return encoded_video(container, codec, seconds, fps, size)


def encode_animation(fmt: str, durations_ms, size=16, **kw) -> bytes:
  """An animation of len(durations_ms) frames cycling through COLOURS (PIL; WebP lossless)."""
  frames = [Image.new("RGB", (size, size), COLOURS[i % 4]) for i in range(len(durations_ms))]
  buf = io.BytesIO()
  frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=durations_ms,
                 loop=0, lossless=True, **kw)
  return buf.getvalue()


def still(fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (16, 16), COLOURS[0]).save(buf, format=fmt)
  return buf.getvalue()


def reason(data: bytes, **limits) -> str:
  with pytest.raises(video.BadVideo) as bad:
    video.sample_1fps(data, **(LIMITS | limits))
  return bad.value.reason


@pytest.mark.parametrize("container, codec", [("mp4", "libx264"), ("mp4", "mpeg4"),
                                              ("webm", "libvpx-vp9"), ("webm", "libvpx"),
                                              ("matroska", "libx264"), ("avi", "mpeg4")])
def test_video_frame_shown_each_second(container, codec):
  jpegs, times = video.sample_1fps(encode_video(container, codec), **LIMITS)
  assert times == [0.0, 1.0, 2.0, 3.0]  # 3.5 s: the frame at 3 s, none at 4 s.
  np.testing.assert_allclose(mean_colours(jpegs), COLOURS, atol=12)


def test_video_cut_at_max_frames():
  jpegs, times = video.sample_1fps(encode_video("mp4", "libx264"), max_pixels=32 * 32, max_frames=2)
  assert times == [0.0, 1.0]
  np.testing.assert_allclose(mean_colours(jpegs), COLOURS[:2], atol=12)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_frame_shown_each_second(fmt):
  # Shown during [0, .5), [.5, 1), [1, 2.5), [2.5, 3.2) s: red, green, blue, yellow.
  data = encode_animation(fmt, [500, 500, 1500, 700])
  assert video.is_animated(data)
  jpegs, times = video.sample_1fps(data, **LIMITS)
  assert times == [0.0, 1.0, 2.0, 3.0]
  np.testing.assert_allclose(mean_colours(jpegs), [COLOURS[0], COLOURS[2], COLOURS[2], COLOURS[3]],
                             atol=12)


def test_animation_frame_without_duration_lasts_a_second():
  gif = encode_animation("GIF", [500] * 3)
  gif = re.sub(rb"\x21\xf9\x04.{4}\x00", b"", gif, flags=re.S)  # Drop each frame's delay (GCE).
  jpegs, times = video.sample_1fps(gif, **LIMITS)
  assert times == [0.0, 1.0, 2.0]
  np.testing.assert_allclose(mean_colours(jpegs), COLOURS[:3], atol=12)


def test_animation_cut_at_max_frames():
  data = encode_animation("GIF", [1000] * 4)
  jpegs, times = video.sample_1fps(data, max_pixels=256, max_frames=3)
  assert times == [0.0, 1.0, 2.0]
  np.testing.assert_allclose(mean_colours(jpegs), COLOURS[:3], atol=12)


@pytest.mark.parametrize("data", [encode_animation("GIF", [1000, 1000], size=64),
                                  encode_animation("PNG", [1000, 1000], size=64)],
                         ids=["GIF", "APNG"])
def test_animation_frame_over_max_pixels(data):
  assert reason(data, max_pixels=64 * 64 - 1) == "enormous_video"
  assert video.sample_1fps(data, max_pixels=64 * 64, max_frames=4)[1] == [0.0, 1.0]


def test_video_frame_over_max_pixels():
  assert reason(encode_video("mp4", "libx264"), max_pixels=32 * 32 - 1) == "enormous_video"


def test_too_many_frames_to_decode():
  # 10 ms frames: 2 s (3 samples) decode 200 frames > MAX_DECODE_RATE * 3 = 180 frames of 16 x 16.
  data = encode_animation("GIF", [10] * 300)
  assert reason(data, max_pixels=16 * 16, max_frames=3) == "enormous_video"
  assert video.sample_1fps(data, max_pixels=16 * 16 * 2, max_frames=3)[1] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, np.random.default_rng(0).bytes(5000),
                                  encode_video("mp4", "libx264")[:1500],
                                  encode_animation("GIF", [500] * 4)[:100]],
                         ids=["empty", "zeros", "random", "truncated MP4", "truncated GIF"])
def test_bad_bytes_give_bad_video(data):
  assert reason(data) in ("corrupt_video", "no_frames")


def test_truncated_webm_keeps_its_whole_seconds():
  data = encode_video("webm", "libvpx-vp9")
  assert reason(data[:len(data) // 4]) in ("corrupt_video", "no_frames")
  jpegs, times = video.sample_1fps(data[:len(data) * 3 // 4], **LIMITS)  # WebM streams: no index.
  assert 1 <= len(times) < 4 and times == [float(t) for t in range(len(times))]
  np.testing.assert_allclose(mean_colours(jpegs), COLOURS[:len(times)], atol=12)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_still_image_has_no_frames(fmt):
  data = still(fmt)
  assert not video.is_animated(data)
  assert reason(data) == "no_frames"


def test_audio_only_has_no_frames():
  buf = io.BytesIO()
  with av.open(buf, "w", format="wav") as out:
    stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
    samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    samples.sample_rate = 8000
    out.mux(stream.encode(samples))
    out.mux(stream.encode())
  assert reason(buf.getvalue()) == "no_frames"


def test_is_video_name_and_is_animated():
  assert all(map(video.is_video_name, ["a.mp4", "b.WEBM", "c.mkv", "d.MoV", "e.avi", "f.m4v"]))
  assert not any(map(video.is_video_name, ["a.gif", "mp4", "a.mp4.jpg", "a.png"]))
  assert video.is_animated(encode_animation("GIF", [100, 100]))
  assert video.is_animated(encode_animation("PNG", [100, 100]))
  assert not video.is_animated(encode_video("mp4", "mpeg4"))
  assert not video.is_animated(b"GIF89a")
  assert not video.is_animated(b"")
