"""Builders for the data-pipeline tests: crafted images, shards of records, one-dataset data configs."""

import io

import av
import numpy as np
from PIL import Image

from data_pipelines import records
from flamingo_jax.config import DataConfig


def jpeg(seed=0, size=(50, 40)) -> bytes:
  """A random RGB JPEG of `size` (width, height)."""
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def encoded_video(container: str = "mp4", codec: str = "mpeg4", seconds: float = 3.5, fps: int = 10,
                  size: int = 32) -> bytes:
  """A video (PyAV) of size x size frames at fps for `seconds`, COLOURS[second] during each
  second."""
  buf = io.BytesIO()
  with av.open(buf, "w", format=container) as out:
    stream = out.add_stream(codec, rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for i in range(round(seconds * fps)):
      pixels = np.full((size, size, 3), COLOURS[i // fps], np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
    out.mux(stream.encode())
  return buf.getvalue()


def mean_colours(frames: list[bytes]) -> np.ndarray:
  """Encoded frames -> [N, 3] mean colour of each."""
  return np.array([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")).reshape(-1, 3).mean(0)
                   for f in frames])


def assert_1fps_colours(record, seconds: int = 4) -> None:
  """A video record of encoded_video(): frames at 0, 1, ... s, each of its second's colour."""
  assert [p.time for p in record.images] == list(range(seconds))
  np.testing.assert_allclose(mean_colours([p.data for p in record.images]), COLOURS[:seconds],
                             atol=16)


def write_shard(path_dir, kind, recs, prefix=None) -> str:
  with records.ShardWriter(str(path_dir), prefix or kind) as writer:
    for r in recs:
      writer.write(r)
  return str(path_dir)


def single(kind, path, **fields) -> DataConfig:
  """A data config with one dataset `kind` at `path` (its own held-out split too); the tokenizer
  object goes to build_mixture directly."""
  dataset = dict(kind=kind, path=path, eval_path=path, batch_size=2, seq_len=16, max_images=1,
                 num_frames=1, loss_weight=1.0) | fields
  return DataConfig.from_dict(dict(source="arrayrecord", tokenizer="(passed to build_mixture)",
                                   datasets={kind: dataset}), "data")
