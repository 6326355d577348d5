r"""Pretrained weights from Hugging Face safetensors checkpoints -> our parameter trees (orbax).

  python -m flamingo_jax.weights.hf.importer llama  --checkpoint DIR --out OUT [--dtype float32]
  python -m flamingo_jax.weights.hf.importer clip   --checkpoint DIR --out OUT
  python -m flamingo_jax.weights.hf.importer siglip --checkpoint DIR --out OUT
  python -m flamingo_jax.weights.hf.importer idefics --checkpoint DIR --out OUT

DIR is a `save_pretrained(..., safe_serialization=True)` directory: `config.json` and either
`model.safetensors` or shards listed by `model.safetensors.index.json` (`weight_map`). Pickled
checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused, never unpickled.

What maps where:
  llama  (LlamaForCausalLM) -> the text-only `DecoderLM(num_extra_tokens=2)` tree, scanned layers
         (`segment_0/block_0/...` [L, ...]); the <image>/<EOC> rows (`extra_embed`, `extra_head`)
         are freshly initialised. Load it with `config.init.lm_checkpoint`
         (`weights.pretrained.load_text_lm`).
  clip   (CLIPVisionModel, or CLIPModel's `vision_model.*` tensors) -> the `VisionTransformer` tree,
         scanned.
  siglip (SiglipVisionModel, or SiglipModel's `vision_model.*` tensors) -> the same, SigLIP variant.
         Load either with `config.init.vision_checkpoint`.
  idefics (IdeficsForVisionText2Text, IDEFICS v1) -> the whole `Flamingo` tree {vision, resampler,
         lm}, scanned; its config fields from `idefics_config` (see the decisions in
         docs/architecture.md). Load it with `config.init.flamingo_checkpoint`.

`*_config(hf_config)` turn a checkpoint's `config.json` into our config fields, so shapes are never
transcribed by hand. The import checks that every expected tensor is found, every tensor found is
used (except the documented `IGNORED` ones) and every shape matches; a mismatch is a ValueError
naming the tensor and the config field to change.

OUT is new (or an empty directory); `--overwrite` replaces an earlier import only, never another
directory, and an OUT that overlaps DIR is refused (`weights.hf.output`). OUT appears complete or
not at all: it is written beside itself under a hidden name and renamed into place.

Memory: tensors are read one at a time from their shard (plain file reads, no memory map) and
written into preallocated output arrays. `import_*` convert the whole tree (the output plus the
largest tensor); the CLI converts and writes `WRITE_BATCH_BYTES` at a time (`ImportPlan.batches`,
`store.save_params_in_batches`), so its peak is a few times the largest parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from flamingo_jax.config import ExecutionConfig, FlamingoConfig, LMConfig, VisionConfig
from flamingo_jax.config.model import DTYPES
from flamingo_jax.models.flamingo import abstract_params
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.vision import VisionTransformer
from flamingo_jax.weights import layout
from flamingo_jax.weights.hf import output
from flamingo_jax.weights.hf.hf_config import (TOKENIZER_FILES, checkpoint_token_ids,
                                               idefics_config, llama_config, read_hf_config,
                                               read_json, vision_config)
from flamingo_jax.weights.hf.mapping import (IGNORED, Source, hf_shape, idefics_sources,
                                             lay_out_into, llama_sources, vision_sources)
from flamingo_jax.weights.hf.safetensors import TensorInfo, checkpoint_tensors, read_tensor
from flamingo_jax.weights.store import save_params_in_batches

NUM_EXTRA_TOKENS = FlamingoConfig().num_extra_tokens  # <image>, <EOC>.


@dataclasses.dataclass(frozen=True)
class Expected:
  """One checkpoint tensor the import needs: our path, its layer in a scanned stack (None when not
  stacked) and the checkpoint shape that lays out to our (per-layer) shape."""

  path: tuple[str, ...]
  layer: int | None
  shape: tuple[int, ...]


def expected_tensors(sources: Mapping[tuple[str, ...], Source],
                     abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
                     stacked: Callable[[tuple[str, ...]], int]) -> dict[str, Expected]:
  """Checkpoint name -> Expected. `abstract` holds our shapes; `stacked(path)` is the [L] length of
  a scanned path (0 when not scanned)."""
  out = {}
  for path, source in sources.items():
    length = stacked(path)
    ours = abstract[path].shape[1:] if length else abstract[path].shape
    for i in (range(length) if length else (None,)):
      layer = None if i is None else source.layer_start + source.layer_stride * i
      out[source.name.format(i=layer)] = Expected(path, i, hf_shape(source, ours))
  return out


@dataclasses.dataclass(frozen=True)
class ImportPlan:
  """A checked import: which checkpoint tensor fills which slot of which of our parameters.

  `params()` converts everything at once (nested dict of numpy arrays); `batches(max_bytes)` yields
  disjoint subtrees (nested dicts) of about `max_bytes` (at least one parameter each), made only
  when asked for, so a writer that drops each before asking for the next holds one at a time.
  `fresh` holds parameters with no checkpoint tensor (made on the host).
  """

  config: Any
  tensors: Mapping[str, TensorInfo]
  sources: Mapping[tuple[str, ...], Source]
  wanted: Mapping[str, Expected]
  abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct]
  dtype: np.dtype
  fresh: Mapping[tuple[str, ...], np.ndarray] = dataclasses.field(default_factory=dict)

  def _convert(self, paths) -> dict[tuple[str, ...], np.ndarray]:
    """Our arrays at `paths`, their checkpoint tensors read one at a time in file order."""
    out = {path: np.empty(self.abstract[path].shape, self.dtype) for path in paths}
    names = [name for name, want in self.wanted.items() if want.path in out]
    for name in sorted(names, key=lambda n: (self.tensors[n].file, self.tensors[n].offset)):
      want = self.wanted[name]
      slot = out[want.path] if want.layer is None else out[want.path][want.layer, ...]
      lay_out_into(self.sources[want.path], read_tensor(self.tensors[name]), slot)
    return out

  def batches(self, max_bytes: int):
    first = {}  # Our path -> where its first tensor lies, so batches read the shards in order.
    for name, want in self.wanted.items():
      first[want.path] = min(first.get(want.path, (self.tensors[name].file, math.inf)),
                             (self.tensors[name].file, self.tensors[name].offset))
    batch, size = [], 0
    for path in sorted(self.sources, key=first.__getitem__):
      nbytes = math.prod(self.abstract[path].shape) * self.dtype.itemsize
      if batch and size + nbytes > max_bytes:
        yield traverse_util.unflatten_dict(self._convert(batch))
        batch, size = [], 0
      batch.append(path)
      size += nbytes
    if batch:
      yield traverse_util.unflatten_dict(self._convert(batch))
    if self.fresh:
      yield traverse_util.unflatten_dict(dict(self.fresh))

  def params(self) -> dict[str, Any]:
    return traverse_util.unflatten_dict({**self._convert(self.sources), **self.fresh})


def plan(tensors: Mapping[str, TensorInfo], sources: Mapping[tuple[str, ...], Source],
         abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
         stacked: Callable[[tuple[str, ...]], int], ignored: tuple[str, ...], dtype: str,
         config: Any, fresh: Mapping[tuple[str, ...], np.ndarray] | None = None) -> ImportPlan:
  """Checks a checkpoint against our parameters and returns the ImportPlan; reads only headers.
  Raises ValueError on a missing, unused or misshapen tensor, or a parameter nothing fills."""
  wanted = expected_tensors(sources, abstract, stacked)
  missing = sorted(set(wanted) - set(tensors))
  if missing:
    raise ValueError(f"The checkpoint lacks {len(missing)} expected tensor(s), e.g. {missing[:3]}; "
                     "check that it is the right model family and that config.json matches it.")
  unused = sorted(name for name in set(tensors) - set(wanted)
                  if not any(re.fullmatch(pattern, name) for pattern in ignored))
  if unused:
    raise ValueError(f"The checkpoint has {len(unused)} tensor(s) the import does not use, e.g. "
                     f"{unused[:3]}; this model has parts our config cannot express (or "
                     "config.json has too few layers).")
  for name, want in wanted.items():
    if tensors[name].shape != want.shape:
      raise ValueError(f"Tensor {name} has shape {tensors[name].shape} but {want.shape} is "
                       f"expected; change {sources[want.path].fields} to match the checkpoint.")
  fresh = dict(fresh or {})
  unmapped = sorted("/".join(p) for p in set(abstract) - set(sources) - set(fresh))
  if unmapped:  # Guards the maps against model changes.
    raise ValueError(f"No checkpoint tensor maps to our parameter(s) {', '.join(unmapped)}.")
  return ImportPlan(config, tensors, sources, wanted, abstract, _target_dtype(dtype), fresh)


def _target_dtype(dtype: str) -> np.dtype:
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}.")
  return np.dtype(jnp.dtype(dtype))


def _llama_init(config: LMConfig, dtype: str, seed: int) -> Callable[[], dict[str, Any]]:
  model = DecoderLM(config, ExecutionConfig(param_dtype=dtype), num_extra_tokens=NUM_EXTRA_TOKENS)

  def init() -> dict[str, Any]:
    return nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"])
  return init


def _llama_stacked(config: LMConfig) -> Callable[[tuple[str, ...]], int]:
  return lambda path: config.num_layers if path[0] == "segment_0" else 0


def llama_checkpoint_shapes(config: LMConfig) -> dict[str, tuple[int, ...]]:
  """Checkpoint name -> shape of every tensor a LlamaForCausalLM checkpoint of `config` holds (for
  tools and benchmarks that write synthetic checkpoints)."""
  abstract = traverse_util.flatten_dict(jax.eval_shape(_llama_init(config, "float32", 0)))
  expected = expected_tensors(llama_sources(config), abstract, _llama_stacked(config))
  return {name: want.shape for name, want in expected.items()}


def _new_token_rows(abstract: Mapping[tuple[str, ...], jax.ShapeDtypeStruct], dtype: str,
                    seed: int) -> dict[tuple[str, ...], np.ndarray]:
  """The <image>/<EOC> rows, drawn on the host (no compilation) at the model's initialiser scales:
  `extra_embed` N(0, 0.02), `extra_head` N(0, 1 / D)."""
  rng = np.random.default_rng(seed)
  rows = {}
  for path, std in ((("extra_embed", "embedding"), lambda shape: 0.02),
                    (("extra_head", "kernel"), lambda shape: shape[0] ** -0.5)):
    if path in abstract:
      shape = abstract[path].shape
      row = rng.standard_normal(shape, np.float32) * std(shape)
      rows[path] = row.astype(_target_dtype(dtype))
  return rows


def plan_llama(checkpoint_dir: str, config: LMConfig | None = None, dtype: str = "float32",
               seed: int = 0) -> ImportPlan:
  """The ImportPlan of a LlamaForCausalLM checkpoint into the text-only
  `DecoderLM(num_extra_tokens=2)` tree (scanned layers). `config` defaults to
  `llama_config(config.json)`; the <image>/<EOC> rows are drawn from `seed` (pretrained.load_text_lm
  keeps the frozen rows only; these complete the tree)."""
  tensors = checkpoint_tensors(checkpoint_dir)
  config = config or llama_config(read_hf_config(checkpoint_dir))
  abstract = traverse_util.flatten_dict(jax.eval_shape(_llama_init(config, dtype, seed)))
  return plan(tensors, llama_sources(config), abstract, _llama_stacked(config), IGNORED["llama"],
              dtype, config, _new_token_rows(abstract, dtype, seed))


def import_llama(checkpoint_dir: str, config: LMConfig | None = None, dtype: str = "float32",
                 seed: int = 0) -> tuple[LMConfig, dict[str, Any]]:
  """(LMConfig, params: nested dict of numpy arrays) of `plan_llama`, converted at once."""
  p = plan_llama(checkpoint_dir, config, dtype, seed)
  return p.config, p.params()


def plan_vision(family: str, checkpoint_dir: str, config: VisionConfig | None = None,
                dtype: str = "float32") -> ImportPlan:
  """The ImportPlan of a CLIP or SigLIP (`family`) checkpoint into the `VisionTransformer` tree
  (scanned). `config` defaults to `vision_config(family, config.json, preprocessor_config.json)`."""
  if family not in ("clip", "siglip"):
    raise ValueError(f"family={family!r}: must be clip or siglip.")
  tensors = checkpoint_tensors(checkpoint_dir)
  if config is None:
    config = vision_config(family, read_hf_config(checkpoint_dir),
                           read_json(checkpoint_dir, "preprocessor_config.json"))
  model = VisionTransformer(config, ExecutionConfig(param_dtype=dtype))
  images = jnp.zeros((1, 1, 1, config.image_size, config.image_size, 3), jnp.uint8)
  abstract = traverse_util.flatten_dict(jax.eval_shape(
      lambda: nn.meta.unbox(model.init(jax.random.key(0), images)["params"])))
  prefix = "vision_model." if any(name.startswith("vision_model.") for name in tensors) else ""
  return plan(tensors, vision_sources(config, prefix), abstract,
              lambda path: config.num_layers if path[0] == "blocks" else 0, IGNORED[family], dtype,
              config)


def import_vision(family: str, checkpoint_dir: str, config: VisionConfig | None = None,
                  dtype: str = "float32") -> tuple[VisionConfig, dict[str, Any]]:
  """(VisionConfig, params: nested dict of numpy arrays) of `plan_vision`, converted at once."""
  p = plan_vision(family, checkpoint_dir, config, dtype)
  return p.config, p.params()


def plan_idefics(checkpoint_dir: str, config: FlamingoConfig | None = None,
                 dtype: str = "float32") -> ImportPlan:
  """The ImportPlan of an IdeficsForVisionText2Text (IDEFICS v1) checkpoint into the whole Flamingo
  tree ({vision, resampler, lm}, scanned layers).

  `config` defaults to `idefics_config(config.json, the tokenizer files' added tokens,
  preprocessor_config.json)`; a checkpoint with new token rows needs tokenizer files naming <image>.
  """
  tensors = checkpoint_tensors(checkpoint_dir)
  if config is None:
    hf = read_hf_config(checkpoint_dir)
    added = checkpoint_token_ids(checkpoint_dir)
    if hf.get("additional_vocab_size", 0) and "<image>" not in added:
      raise ValueError(
          f"{checkpoint_dir} has {hf['additional_vocab_size']} new token rows but no tokenizer "
          f"file ({', '.join(TOKENIZER_FILES)}) naming <image>; copy the checkpoint's tokenizer "
          "files next to its weights, or pass a config with model.image_token set.")
    config = idefics_config(hf, added, read_json(checkpoint_dir, "preprocessor_config.json"))
  abstract = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(
      dataclasses.replace(config, execution=ExecutionConfig(param_dtype=dtype)))))
  lengths = dict(layout.stacks(config))
  return plan(tensors, idefics_sources(config), abstract, lambda path: lengths.get(path[:2], 0),
              IGNORED["idefics"], dtype, config)


def import_idefics(checkpoint_dir: str, config: FlamingoConfig | None = None,
                   dtype: str = "float32") -> tuple[FlamingoConfig, dict[str, Any]]:
  """(FlamingoConfig, params: nested dict of numpy arrays) of `plan_idefics`, converted at once."""
  p = plan_idefics(checkpoint_dir, config, dtype)
  return p.config, p.params()


# Bytes of converted parameters the CLI holds at a time (a parameter larger than this is one batch).
WRITE_BATCH_BYTES = 64 * 2**20
PROG = "python -m flamingo_jax.weights.hf.importer"
EXIT_REFUSED = 2  # The CLI's status when it refuses an import (one line on stderr, no traceback).
# Per family: the config field that loads the import and the config section of its settings.
SETTINGS = {"llama": ("config.init.lm_checkpoint", "config.model.lm"),
            "clip": ("config.init.vision_checkpoint", "config.model.vision"),
            "siglip": ("config.init.vision_checkpoint", "config.model.vision"),
            "idefics": ("config.init.flamingo_checkpoint", "config.model")}


def plan_family(family: str, checkpoint_dir: str, dtype: str = "float32") -> ImportPlan:
  """The ImportPlan of a checkpoint of `family` (llama | clip | siglip | idefics)."""
  if family == "llama":
    return plan_llama(checkpoint_dir, dtype=dtype)
  if family == "idefics":
    return plan_idefics(checkpoint_dir, dtype=dtype)
  return plan_vision(family, checkpoint_dir, dtype=dtype)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags: on `flags.FLAGS` under `app.run`, on a fresh FlagValues in `run`."""
  flags.DEFINE_string("checkpoint", None, "save_pretrained directory", required=True,
                      flag_values=flag_values)
  flags.DEFINE_string("out", None, "orbax output directory: new, or empty (see --overwrite)",
                      required=True, flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "replace an --out written by an earlier import (never "
                    "another directory)", flag_values=flag_values)
  flags.DEFINE_enum("dtype", "float32", DTYPES, "stored parameter dtype", flag_values=flag_values)


def _print_settings(family: str, out: str, config) -> None:
  if family == "idefics":  # The stored dtype is not a model setting.
    config = dataclasses.replace(config, execution=ExecutionConfig())
  use, section = SETTINGS[family]
  print(f"Wrote {out}. Set {use}={os.path.abspath(out)} and {section} to:")
  print(json.dumps(dataclasses.asdict(config), indent=2))


def write_import(family: str, checkpoint: str, out: str, dtype: str,
                 overwrite: bool = False) -> ImportPlan:
  """Imports the checkpoint of `family` to `out` (see `output.write`) and returns its plan. Raises
  ValueError (or OSError) naming what to change; `out` is then as it was."""
  output.check_apart(out, checkpoint)
  import_plan = plan_family(family, checkpoint, dtype)
  settings = {"family": family, "checkpoint": os.path.realpath(checkpoint), "dtype": dtype}

  def write_tree(path: str) -> None:
    save_params_in_batches(path, import_plan.batches(WRITE_BATCH_BYTES))
  output.write(out, write_tree, settings, overwrite=overwrite)
  return import_plan


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI (`app.run`'s main): argv = [program, family], the flags parsed into `flag_values`. A
  refused import (a checkpoint that cannot be imported, an --out that cannot be written) is a
  one-line error on stderr, no traceback, exit status `EXIT_REFUSED`."""
  if flag_values is flags.FLAGS and not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Keep the console to the result (as the trainer).
  if len(argv) != 2 or argv[1] not in SETTINGS:
    raise app.UsageError(f"give one family, {' | '.join(SETTINGS)}; got "
                         f"{' '.join(argv[1:]) or 'none'}.")
  family, f = argv[1], flag_values
  try:
    import_plan = write_import(family, f.checkpoint, f.out, f.dtype, f.overwrite)
  except (ValueError, OSError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    sys.exit(EXIT_REFUSED)
  _print_settings(family, f.out, import_plan.config)


def run(args: Sequence[str]) -> None:
  """The CLI in this process (tests, benchmarks): `args` without the program name, e.g. ["llama",
  "--checkpoint", DIR, "--out", OUT], parsed into a fresh FlagValues (repeatable; `flags.FLAGS`
  untouched). A bad flag raises `flags.Error`, a bad family `app.UsageError`."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  main(flag_values([PROG, *args]), flag_values)


if __name__ == "__main__":
  define_flags()
  app.run(main)
