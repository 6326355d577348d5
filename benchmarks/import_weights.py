r"""Import benchmark: throughput and peak memory of `python -m flamingo_jax.weights.hf.importer llama`.

  python benchmarks/import_weights.py [--layers 6] [--dtype float32]

Writes a random LLaMA-layout safetensors checkpoint (vocab 32000, width 512, MLP 1376; 6 layers are
~207 MB in float32) to a temporary directory, then imports it in a fresh process (read, convert,
write the orbax tree), as the CLI does. Prints JSON lines {"benchmark", "metric", "value", "unit"}:
`import_gb_per_s` (checkpoint bytes over the import's wall time) and `import_peak_rss_over_size`
((peak RSS - RSS before the import) / checkpoint bytes; the baseline is the interpreter with JAX
loaded; the peak is the process's VmHWM). tests/weights/test_import_weights.py asserts the ratio < 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import emitter  # noqa: E402
from flamingo_jax.weights.hf import importer as import_weights  # noqa: E402
from flamingo_jax.weights.hf.hf_config import llama_config  # noqa: E402


def write_llama_checkpoint(path: str, num_layers: int, dtype: str) -> int:
  """A random LlamaForCausalLM-layout checkpoint (config.json + model.safetensors); returns its size
  in bytes. Names and shapes come from the importer's own map."""
  hf_config = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                   num_hidden_layers=num_layers, num_attention_heads=8, num_key_value_heads=8,
                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
  shapes = import_weights.llama_checkpoint_shapes(llama_config(hf_config))
  rng = np.random.default_rng(0)
  tensors = {name: rng.standard_normal(shape, np.float32).astype(dtype)
             for name, shape in shapes.items()}
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f)
  return os.path.getsize(os.path.join(path, "model.safetensors"))


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_import(checkpoint: str, out: str, dtype: str) -> dict:
  """Imports in this process (JAX already loaded by the imports above); returns wall seconds and RSS
  before / at peak (bytes). The peak is this process's VmHWM, not ru_maxrss: Linux carries
  ru_maxrss over exec from the parent that started us (a parent with torch loaded would set it)."""
  baseline = _rss_bytes()
  start = time.perf_counter()
  import_weights.run(["llama", "--checkpoint", checkpoint, "--out", out, "--dtype", dtype])
  seconds = time.perf_counter() - start
  peak = _peak_rss_bytes()
  return dict(seconds=seconds, baseline=baseline, peak=peak)


def measure(num_layers: int, dtype: str) -> dict:
  """Writes a checkpoint, imports it in a fresh process; returns size, seconds, RSS figures."""
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = os.path.join(tmp, "hf")
    os.makedirs(checkpoint)
    size = write_llama_checkpoint(checkpoint, num_layers, dtype)
    child = subprocess.run(
        [sys.executable, __file__, "--child", checkpoint, os.path.join(tmp, "out"), "--dtype", dtype],
        check=True, capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
  return dict(size=size, **result)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                      help="checkpoint and output dtype")
  parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run_import(*args.child, args.dtype)), flush=True)
    return
  emit = emitter("import_weights")
  r = measure(args.layers, args.dtype)
  emit("checkpoint_mb", r["size"] / 1e6, "MB", layers=args.layers, dtype=args.dtype)
  emit("import_gb_per_s", r["size"] / r["seconds"] / 1e9, "GB/s")
  emit("import_peak_rss_over_size", (r["peak"] - r["baseline"]) / r["size"], "ratio",
       baseline_mb=round(r["baseline"] / 1e6), peak_mb=round(r["peak"] / 1e6))


if __name__ == "__main__":
  main()
