"""The importer never harms what it reads or did not write (weights/hf/output.py), and refuses
malformed safetensors files with one error naming the file (weights/hf/safetensors.py).

Checkpoints are tiny random-weight models saved in the test (nothing is downloaded).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from flamingo_jax.weights import store
from flamingo_jax.weights.hf import importer, output, safetensors
from flamingo_jax.weights.hf.safetensors import SafetensorsError


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny CLIPVisionModel checkpoint (one model.safetensors)."""
  torch.manual_seed(0)
  model = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=8, patch_size=4))
  path = str(tmp_path_factory.mktemp("clip"))
  model.save_pretrained(path, safe_serialization=True)
  return path


@pytest.fixture
def clip(tmp_path, clip_dir):
  """A fresh copy of the checkpoint, in this test's directory."""
  return shutil.copytree(clip_dir, str(tmp_path / "clip"))


def _snapshot(root):
  """relative path -> sha256 of every file (the target of every link) under `root`."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      if os.path.islink(path):
        found[os.path.relpath(path, root)] = "link -> " + os.readlink(path)
      elif os.path.isfile(path):
        with open(path, "rb") as f:
          found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
      else:
        found[os.path.relpath(path, root)] = "dir"
  return found


def _refused(capsys, args, message):
  """Runs the CLI in this process; asserts exit status 2 and a one-line `message`, no traceback."""
  with pytest.raises(SystemExit) as exit_info:
    importer.run(args)
  assert exit_info.value.code == importer.EXIT_REFUSED == 2
  error = capsys.readouterr().err
  assert message in error and "Traceback" not in error and error.count("\n") == 1, error


def _import(checkpoint, out, *flags):
  importer.run(["clip", "--checkpoint", checkpoint, "--out", out, *flags])


def _loads(out, checkpoint, dtype="float32"):
  """Asserts that `out` holds the import of `checkpoint` in `dtype`."""
  _, expected = importer.import_vision("clip", checkpoint, dtype=dtype)
  host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=host), expected)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(store.load_params(out, abstract)),
               expected)


def _blob_layout(tmp_path, clip):
  """A Hugging Face cache layout: the checkpoint's files are links into a `blobs` directory."""
  blobs = tmp_path / "blobs"
  blobs.mkdir()
  for name in os.listdir(clip):
    os.rename(os.path.join(clip, name), blobs / name)
    os.symlink(blobs / name, os.path.join(clip, name))
  return str(blobs)


@pytest.mark.parametrize("case", ["same", "inside", "contains", "link_to_it", "its_blobs"])
def test_out_overlapping_the_checkpoint_is_refused(case, tmp_path, clip, capsys):
  blobs = _blob_layout(tmp_path, clip) if case == "its_blobs" else None
  if case == "link_to_it":
    os.symlink(clip, tmp_path / "link")
  out = {"same": clip, "inside": os.path.join(clip, "imported"), "contains": str(tmp_path),
         "link_to_it": str(tmp_path / "link"), "its_blobs": blobs}[case]
  before = _snapshot(tmp_path)
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", out, "--overwrite"],
           "part of the checkpoint being imported")
  assert _snapshot(tmp_path) == before


def test_non_empty_out_is_refused_without_overwrite(tmp_path, clip, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", str(out)], "pass --overwrite")
  assert _snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


@pytest.mark.parametrize("case", ["not_ours", "ours_plus_a_user_file", "a_file"])
def test_overwrite_refuses_what_the_importer_did_not_write(case, tmp_path, clip, capsys):
  out = str(tmp_path / "out")
  if case == "not_ours":
    store.save_params(out, {"w": np.ones(3, np.float32)})  # An orbax tree, but no import marker.
  elif case == "ours_plus_a_user_file":
    _import(clip, out)
    (tmp_path / "out" / "state" / "notes.txt").write_text("mine")
  else:
    (tmp_path / "out").write_text("mine")
  before = _snapshot(tmp_path)
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", out, "--overwrite"],
           {"not_ours": f"no valid {output.MARKER}", "ours_plus_a_user_file": "state/notes.txt",
            "a_file": "is not a directory"}[case])
  assert _snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_import(tmp_path, clip, capsys):
  out = str(tmp_path / "out")
  _import(clip, out)
  with open(os.path.join(out, output.MARKER)) as f:
    assert json.load(f)["dtype"] == "float32"
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", out], "pass --overwrite")
  _import(clip, out, "--overwrite", "--dtype", "bfloat16")
  _loads(out, clip, "bfloat16")
  assert sorted(os.listdir(tmp_path)) == ["clip", "out"]  # No staging directory left.


def test_empty_out_directory_is_written(tmp_path, clip):
  (tmp_path / "out").mkdir()
  _import(clip, str(tmp_path / "out"))
  _loads(str(tmp_path / "out"), clip)


def test_failed_write_leaves_out_untouched_and_no_staging_directory(tmp_path, clip, capsys,
                                                                   monkeypatch):
  out = str(tmp_path / "out")
  _import(clip, out)
  before = _snapshot(tmp_path)
  reads = []

  def read_then_fail(info):  # Fails once orbax has written part of the tree.
    reads.append(info)
    if len(reads) > 3:
      staging = [n for n in os.listdir(tmp_path) if n.startswith(".out.") and n.endswith(".tmp")]
      assert len(staging) == 1 and os.listdir(tmp_path / staging[0])  # Orbax has written there.
      raise SafetensorsError(f"{info.file}: simulated read failure")
    return safetensors.read_tensor(info)
  monkeypatch.setattr(importer, "read_tensor", read_then_fail)
  monkeypatch.setattr(importer, "WRITE_BATCH_BYTES", 1)  # One parameter per partial save.
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", out, "--overwrite"],
           "simulated read failure")
  assert _snapshot(tmp_path) == before


def test_malformed_checkpoint_leaves_out_untouched(tmp_path, clip, capsys):
  out = str(tmp_path / "out")
  _import(clip, out)
  weights = os.path.join(clip, "model.safetensors")
  os.truncate(weights, os.path.getsize(weights) - 100)
  before = _snapshot(tmp_path)
  _refused(capsys, ["clip", "--checkpoint", clip, "--out", out, "--overwrite"],
           "model.safetensors: tensor")
  assert _snapshot(tmp_path) == before


def test_save_params_replaces_only_an_orbax_tree(tmp_path):
  user = tmp_path / "user"
  user.mkdir()
  (user / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="is not an orbax checkpoint"):
    store.save_params(str(user), {"w": np.ones(3, np.float32)})
  assert _snapshot(user) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
  export = str(tmp_path / "export")
  for value in (1.0, 2.0):  # A re-run's export replaces the earlier one.
    store.save_params(export, {"w": np.full(3, value, np.float32)})
  host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  loaded = store.load_params(export, {"w": jax.ShapeDtypeStruct((3,), np.float32, sharding=host)})
  np.testing.assert_array_equal(loaded["w"], np.full(3, 2.0, np.float32))


def _valid_file(path):
  save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int8)}, path)


def _with_header(path, edit):
  """Rewrites `path`'s JSON header through `edit(header)`, keeping its data."""
  with open(path, "rb") as f:
    length = int.from_bytes(f.read(8), "little")
    header, data = json.loads(f.read(length)), f.read()
  edit(header)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + data)


def _set(tensor, key, value):
  return lambda header: header[tensor].__setitem__(key, value)


def _write_raw(data):
  def write(path):
    with open(path, "wb") as f:
      f.write(data)
  return write


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 +
               b"\nsize 1234\n")
MALFORMED = {
    "lfs_pointer": (_write_raw(LFS_POINTER), "is a Git LFS pointer, not the weights: run `git lfs"),
    "shorter_than_8_bytes": (_write_raw(b"\x10\x00"), "is 2 bytes, too short"),
    "header_length_past_the_end": (_write_raw((10**6).to_bytes(8, "little") + b"{}"),
                                   "header length (1000000 bytes) exceeds the 2 bytes"),
    "header_not_json": (_write_raw((4).to_bytes(8, "little") + b"{{{{"), "not valid JSON"),
    "header_not_an_object": (_write_raw((2).to_bytes(8, "little") + b"[]"), "JSON list"),
    "entry_without_offsets": (lambda p: _with_header(p, lambda h: h["a"].pop("data_offsets")),
                              "tensor a: its header entry lacks"),
    "offsets_past_the_data": (lambda p: _with_header(p, _set("b", "data_offsets", [24, 40])),
                              "tensor b has data_offsets [24, 40] past the end of the data"),
    "offsets_reversed": (lambda p: _with_header(p, _set("a", "data_offsets", [24, 0])),
                         "tensor a has data_offsets [24, 0]"),
    "unknown_dtype": (lambda p: _with_header(p, _set("a", "dtype", "F8_E4M3")),
                      "tensor a has dtype 'F8_E4M3'"),
    "negative_shape": (lambda p: _with_header(p, _set("a", "shape", [-2, 3])),
                       "tensor a has shape [-2, 3]"),
    "shape_and_offsets_disagree": (lambda p: _with_header(p, _set("a", "shape", [3, 3])),
                                   "tensor a spans 24 bytes but dtype F32 and shape [3, 3] take"),
    "truncated_data": (lambda p: (_valid_file(p), os.truncate(p, os.path.getsize(p) - 2)),
                       "past the end of the data"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_safetensors_is_a_safetensors_error_naming_the_file(kind, tmp_path):
  make, message = MALFORMED[kind]
  path = str(tmp_path / "model.safetensors")
  _valid_file(path)
  make(path)
  with pytest.raises(SafetensorsError) as error:
    safetensors.checkpoint_tensors(str(tmp_path))
  assert path in str(error.value) and message in str(error.value), str(error.value)


def test_valid_file_reads_back(tmp_path):
  _valid_file(str(tmp_path / "model.safetensors"))
  tensors = safetensors.checkpoint_tensors(str(tmp_path))
  np.testing.assert_array_equal(safetensors.read_tensor(tensors["a"]),
                                np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("index, message", [
    ({"metadata": {}}, "has no weight_map"),
    ({"weight_map": {"a": "model-00001-of-00002.safetensors"}}, "names 1 shard(s) not in"),
])
def test_malformed_index_is_a_safetensors_error(index, message, tmp_path):
  path = tmp_path / "model.safetensors.index.json"
  path.write_text(json.dumps(index))
  with pytest.raises(SafetensorsError, match=message.replace("(", r"\(").replace(")", r"\)")):
    safetensors.checkpoint_tensors(str(tmp_path))


def test_cli_refuses_an_lfs_pointer_without_a_traceback(tmp_path):
  checkpoint = tmp_path / "clip"
  checkpoint.mkdir()
  (checkpoint / "config.json").write_text("{}")
  (checkpoint / "model.safetensors").write_bytes(LFS_POINTER)
  result = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.weights.hf.importer", "clip", "--checkpoint",
       str(checkpoint), "--out", str(tmp_path / "out")], capture_output=True, text=True,
      timeout=120, check=False)
  assert result.returncode == 2
  assert "is a Git LFS pointer, not the weights: run `git lfs pull` in" in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(tmp_path)) == ["clip"]
