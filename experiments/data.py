"""Data configs for `data_pipelines.mixture.build_mixture`.

`demo_data_config(root)` reads the demo corpus (`python -m data_pipelines.demo --out ROOT`) with shapes
for the `tiny` model (image_size 32): the three kinds with the paper's loss weights and p_next, small
batches, no flips (mirrored digits and "moving left" clips would contradict their captions). Pass split="eval" to read the held-out shards (and build_mixture(..., split="eval") to turn
off augmentation). Fields are documented in data_pipelines/mixture.py.
"""

import os

import ml_collections


def demo_data_config(root: str, split: str = "train") -> ml_collections.ConfigDict:
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}; the demo corpus has 'train' and 'eval'.")
  def dataset(kind, batch_size, seq_len, max_images, num_frames, loss_weight, **extra):
    return dict(kind=kind, path=os.path.join(root, split, kind), batch_size=batch_size,
                seq_len=seq_len, max_images=max_images, num_frames=num_frames,
                loss_weight=loss_weight, random_flip=False, **extra)
  return ml_collections.ConfigDict(dict(
      seed=0,
      num_workers=0,
      accumulation="all",
      datasets=dict(
          interleaved=dataset("interleaved", 8, 64, 3, 1, 1.0, p_next=0.5),
          pairs=dataset("pairs", 8, 32, 1, 1, 0.2),
          video=dataset("video", 4, 32, 1, 4, 0.03),
      ),
  ))
