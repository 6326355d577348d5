"""The training plot: the final gates by the depth of the LM layer each block precedes."""

import json

import numpy as np

from flamingo_jax.tools.plot import final_gates_by_depth, plot_shots, plot_training
from flamingo_jax.weights import store


def _run(workdir, xattn=None):
  lines = [{"step": s, "loss": 1.0 / s, "gates/attn": [-0.1 * s, 0.2], "gates/ffw": [0.05, -0.3 * s]}
           for s in (1, 2)]
  workdir.mkdir(exist_ok=True)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  if xattn is not None:
    store.write_run_record(str(workdir), {"config": {"model": {"xattn": xattn}}, "towers": {}})
  return lines[-1]


def test_final_gates_sit_at_the_depth_of_their_lm_layer(tmp_path):
  last = _run(tmp_path, {"every": 3, "offset": 1})
  depths, attn, ffw = final_gates_by_depth(str(tmp_path), last)
  np.testing.assert_array_equal(depths, [1, 4])
  np.testing.assert_allclose(attn, [0.2, 0.2])
  np.testing.assert_allclose(ffw, [0.05, 0.6])
  out = plot_training(str(tmp_path), str(tmp_path / "training.png"))
  assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_a_run_record_the_depth_is_the_block_index(tmp_path):
  last = _run(tmp_path)
  np.testing.assert_array_equal(final_gates_by_depth(str(tmp_path), last)[0], [0, 1])


def test_shots_plot_of_evaluation_results(tmp_path):
  results = {"tasks": {
      "renaming": {"metric": "top1", "num_queries": 200, "chance": 25.0,
                   "scores": {"0": 25.0, "4": 61.0, "1": 40.0},
                   "intervals": {"0": [19.5, 31.4], "1": [33.5, 46.9], "4": [54.1, 67.5]}},
      "captions": {"metric": "cider", "num_queries": 100, "chance": None,
                   "scores": {"0": 150.0, "4": 155.0},
                   "intervals": {"0": [140.0, 160.0], "4": [146.0, 164.0]}}}}
  from PIL import Image
  out = plot_shots(results, str(tmp_path / "shots.png"))
  assert Image.open(out).size == (1000, 400)  # One 5 x 4 inch panel per task at 100 dpi.
