"""Will a trained model serve on a TPU slice, and how fast? The inference twin of `training.aot`.

`fit_report(config, topology, shape)` lowers, on the slice's compile-only devices (libtpu), the two
programs generation runs (`inference.decoding`), with the parameters laid out as training lays them
out on `config.mesh` (`weights.pretrained.flamingo_parts`: frozen towers by `mesh.frozen`, stored in
`train.frozen_dtype`; the trainable tree as trained) and the rows split over data x fsdp:
  prefill: `shape.batch` prompts of `shape.prompt` tokens with `shape.images` images each, through
    the vision tower and resampler, into a cache of `shape.context` slots (`decoding.prefill`);
  decode step: one token for each of the `shape.batch` rows against that cache, the self-attention
    cache donated as the loop carries it (`decoding.decode_step`).
Per chip it reports each program's memory (parameters, caches, temporaries, total against HBM), the
largest batch at this context and the largest context at this batch (the decode step compiled at
the batch and at twice it, then secant steps on compiled memory: `largest_batch`), and the decode step's estimated time and tokens/s per
chip with the training estimator (`training.estimate`: reduced-depth unrolled compiles of the same
decode step, costed per chip with their collectives over the ICI, fitted linearly in LM depth).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.inference import decoding
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.training import aot, cost_model, estimate
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.pretrained import flamingo_parts

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class ServeShape:
  """What one generation call holds: rows, cache slots, prompt tokens, images per row."""

  batch: int = 8
  context: int = 2048  # Cache slots: prompt + new tokens.
  prompt: int = 1024
  images: int = 8

  def __post_init__(self):
    for name in ("batch", "context", "prompt", "images"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name}={getattr(self, name)}: must be >= 1.")
    if self.prompt >= self.context:
      raise ValueError(f"--prompt={self.prompt} must be below --context={self.context} (the cache "
                       "holds the prompt and the new tokens).")


class Programs:
  """The prefill and the decode step of `config` on `mesh`, lowered from abstract inputs."""

  def __init__(self, config: Config, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    parts = flamingo_parts(config, mesh)
    self.params = ptree.merge(parts.abstract_frozen(config.train.frozen_dtype),
                              parts.abstract_trainable())
    self.rows = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))

  def _model(self, params):
    model_config, params = decoding.decoding_model(self.config.model, params)
    return Flamingo(model_config), params

  def _inputs(self, shape: ServeShape):
    """tokens, mask [B, T]; images [B, N, 1, H, W, 3] uint8: abstract, split over the rows."""
    size = self.config.model.vision.image_size
    row = lambda s, d: jax.ShapeDtypeStruct(s, d, sharding=self.rows)  # noqa: E731
    b, t = shape.batch, shape.prompt
    return (row((b, t), jnp.int32), row((b, t), jnp.bool_),
            row((b, shape.images, 1, size, size, 3), jnp.uint8))

  def _prefill_fn(self, shape: ServeShape):
    def run(params, tokens, mask, images):
      model, params = self._model(params)
      visual = model.apply({"params": params}, images, method=Flamingo.encode_images)
      logits, cache, context_cache, _, _ = decoding.prefill(model, params, visual, tokens, mask,
                                                            shape.context)
      return logits[:, -1], cache, context_cache, visual
    return run

  def prefill(self, shape: ServeShape):
    """Lowered prefill -> last logits [B, V + 2], cache, context_cache, visual [B, N, R, D]."""
    with sharding.active(self.mesh):
      return jax.jit(self._prefill_fn(shape)).lower(self.params, *self._inputs(shape))

  def caches(self, shape: ServeShape):
    """Abstract (cache, context_cache, visual) as the prefill leaves them: keys / values
    [(L,) B, K, ., .] (layers.CACHE_AXES) split over the rows and the heads, visual over rows."""
    with sharding.active(self.mesh):
      _, cache, context_cache, visual = jax.eval_shape(self._prefill_fn(shape), self.params,
                                                       *self._inputs(shape))
    def heads(x):  # [(L,) B, K, ., .]
      spec = jax.P(*([None] * (x.ndim - 4)), ("data", "fsdp"), "tensor", None, None)
      return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                  sharding=jax.sharding.NamedSharding(self.mesh, spec))
    return (jax.tree.map(heads, cache), jax.tree.map(heads, context_cache),
            jax.ShapeDtypeStruct(visual.shape, visual.dtype, sharding=self.rows))

  def decode_step(self, shape: ServeShape):
    """(lowered decode step over `shape.batch` rows, its abstract self-attention cache)."""
    cache, context_cache, visual = self.caches(shape)
    b = shape.batch
    one = lambda d: jax.ShapeDtypeStruct((b, 1), d, sharding=self.rows)  # noqa: E731
    key_mask = jax.ShapeDtypeStruct((b, shape.context), jnp.bool_, sharding=self.rows)
    index = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=self.rows)

    def run(params, cache, context_cache, visual, tokens, positions, phi, index, key_mask):
      model, params = self._model(params)
      logits, cache = decoding.decode_step(model, params, cache, context_cache, visual, tokens,
                                           positions, phi, index, key_mask)
      return logits[:, -1], cache
    with sharding.active(self.mesh):
      return jax.jit(run, donate_argnums=(1,)).lower(
          self.params, cache, context_cache, visual, one(jnp.int32), one(jnp.int32),
          one(jnp.int32), index, key_mask), cache


def _bytes(tree) -> int:
  return aot.bytes_per_device(tree)


def _memory(lowered, resident: int) -> dict[str, float]:
  """Per-chip bytes of a program: total and temporaries, from its compile; when the TPU compiler
  refuses it for want of HBM, from its error (temporaries alone: plus the `resident` inputs)."""
  try:
    m = lowered.compile().memory_analysis()
  except Exception as e:  # noqa: BLE001 - the TPU compiler reports running out of HBM this way.
    oom = aot._parse_oom(str(e))
    if oom is None:
      raise
    kind, needed, _ = oom
    return ({"total": needed, "temporaries": float("nan")} if kind == "total" else
            {"total": needed + resident, "temporaries": needed})
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"total": total, "temporaries": m.temp_size_in_bytes}


def _compiled_memory(programs: Programs, shape: ServeShape, with_prefill: bool = True
                     ) -> dict[str, Any]:
  """Per-chip bytes of the decode step (and the prefill) at `shape`, and of the cache."""
  start = time.perf_counter()
  params = _bytes(programs.params)
  out = {"prefill": _memory(programs.prefill(shape), params)} if with_prefill else {}
  lowered, cache = programs.decode_step(shape)
  return out | {"decode": _memory(lowered, params + _bytes(cache)), "cache_bytes": _bytes(cache),
                "compile_s": time.perf_counter() - start}


def largest_batch(programs: Programs, shape: ServeShape, total: float, hbm: float, step: int,
                  rounds: int = 3) -> dict[str, Any]:
  """The largest batch (a multiple of `step`, the batch devices) whose decode step fits `hbm` at
  `shape.context`, by secant steps on compiled memory: from the compiles at the batch (`total`
  bytes) and at twice the batch, the line through the last two compiles gives the next candidate,
  compiled in turn (`rounds` at most; memory is not linear in the batch everywhere, so the last
  candidate may not fit). Also the largest context at `shape.batch`, from the line through the two
  largest compiles that fit (the last two if fewer fit: past the fit the compiler may change its
  layouts, and memory jumps), each row's share taken as proportional to its context; None when
  that line does not grow with the batch."""
  compiled = {shape.batch: total}

  def compile_at(batch):
    compiled[batch] = _compiled_memory(programs, dataclasses.replace(shape, batch=batch),
                                       with_prefill=False)["decode"]["total"]

  def line(batches):  # (fixed bytes, bytes per row) through the compiles at two batches.
    (b1, m1), (b2, m2) = sorted((b, compiled[b]) for b in batches)
    per_row = (m2 - m1) / (b2 - b1)
    return m1 - b1 * per_row, per_row

  compile_at(2 * shape.batch)
  order = [shape.batch, 2 * shape.batch]
  for _ in range(rounds):
    fixed, per_row = line(order[-2:])
    if per_row > 0:
      candidate = int((hbm - fixed) // (per_row * step)) * step
    elif compiled[max(order)] <= hbm:
      # Memory did not grow with the batch (the compiler changed its layouts): no line yet.
      candidate = 2 * max(order)
    else:
      break
    if candidate < step or candidate in compiled:
      break
    compile_at(candidate)
    order.append(candidate)
  fitting = sorted(b for b, m in compiled.items() if m <= hbm)
  fixed, per_row = line(fitting[-2:] if len(fitting) >= 2 else order[-2:])
  best = max(fitting, default=0)
  return {"decode_fixed_gib": fixed / GIB, "decode_gib_per_row": per_row / GIB,
          "max_batch_at_context": best,
          "max_batch_decode_total_gib": compiled[best] / GIB if best else None,
          "batches_compiled": {b: compiled[b] / GIB for b in order},
          # None where the line does not grow with the batch: no context can be read from it.
          "max_context_at_batch": int((hbm - fixed) // (shape.batch * per_row / shape.context))
          if per_row > 0 else None}


def decode_estimate(config: Config, topology: aot.Topology, devices, shape: ServeShape,
                    compiles: int = 2) -> dict[str, Any]:
  """The training estimator on the decode step: `compiles` reduced-depth unrolled compiles (LM
  layers in units of xattn.every), fitted in depth and evaluated at full depth."""
  unit = config.model.xattn.every
  costs = []
  for k in range(1, compiles + 1):
    reduced = config.replace({"model.execution.scan_layers": False,
                              "model.lm.num_layers": unit * k})
    programs = Programs(reduced, sharding.make_mesh(*_mesh_sizes(config), devices=devices))
    lowered, _ = programs.decode_step(shape)
    costs.append(estimate.executable_cost(lowered.compile(), topology, programs.mesh, (unit * k,),
                                          lambda: 0.0))
  step = cost_model.step_seconds(cost_model.fit(costs), (config.model.lm.num_layers,))
  return {"decode_step_s": step["step_s"], "decode_compute_s": step["compute_s"],
          "decode_exposed_comm_s": step["exposed_comm_s"],
          "tokens_per_s_per_chip": shape.batch / step["step_s"] / topology.chips,
          "method": "decode step: " + estimate.METHOD,
          "per_compile": [c.as_dict() | {"depth": list(c.depth)} for c in costs]}


def _mesh_sizes(config: Config) -> tuple[int, int, int]:
  return config.mesh.data, config.mesh.fsdp, config.mesh.tensor


def fit_report(config: Config, topology: aot.Topology, shape: ServeShape,
               with_estimate: bool = True) -> dict[str, Any]:
  """Memory per chip of the prefill and decode step at `shape`, the largest batch and context that
  fit (extrapolated, the batch checked by a compile), and the decode estimate (module docstring)."""
  if config.task != "flamingo":
    raise ValueError(f"task={config.task}: the generate fit check needs a task=flamingo config.")
  devices = aot.topology_devices(topology)
  mesh = sharding.make_mesh(*_mesh_sizes(config), devices=devices)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if shape.batch % batch_devices:
    raise ValueError(f"--batch={shape.batch} must split over mesh.data x mesh.fsdp = "
                     f"{batch_devices} devices.")
  if config.model.lm.num_kv_heads % mesh.shape["tensor"]:
    raise ValueError(f"mesh.tensor={mesh.shape['tensor']} must divide model.lm.num_kv_heads="
                     f"{config.model.lm.num_kv_heads} (the cache is split over the heads).")
  programs = Programs(config, mesh)
  measured = _compiled_memory(programs, shape)
  hbm = topology.chip.hbm_gib * GIB
  search = largest_batch(programs, shape, measured["decode"]["total"], hbm, batch_devices)
  report = {
      "preset": config.preset, "topology": topology.name, "chips": topology.chips,
      "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape))),
      "frozen_policy": config.mesh.frozen, "shape": dataclasses.asdict(shape),
      "params_gib": _bytes(programs.params) / GIB, "cache_gib": measured["cache_bytes"] / GIB,
      "prefill_total_gib": measured["prefill"]["total"] / GIB,
      "prefill_temporaries_gib": measured["prefill"]["temporaries"] / GIB,
      "decode_total_gib": measured["decode"]["total"] / GIB,
      "decode_temporaries_gib": measured["decode"]["temporaries"] / GIB,
      "hbm_gib": float(topology.chip.hbm_gib), "compile_s": measured["compile_s"],
      "fits": max(measured["prefill"]["total"], measured["decode"]["total"]) <= hbm,
      **search,
  }
  if with_estimate and report["fits"]:
    report["estimate"] = decode_estimate(config, topology, devices, shape)
  return report


def format_report(r: dict[str, Any]) -> str:
  """The report as console lines."""
  s = r["shape"]
  lines = [
      f"{r['preset']} generating on {r['topology']} ({r['chips']} chips), mesh {r['mesh']}, frozen "
      f"{r['frozen_policy']}: batch {s['batch']}, context {s['context']} (prompt {s['prompt']}, "
      f"{s['images']} images per row)",
      f"  per chip: params {r['params_gib']:.2f} GiB, self-attention cache {r['cache_gib']:.2f} GiB",
      f"  prefill {r['prefill_total_gib']:.2f} GiB (temporaries {r['prefill_temporaries_gib']:.2f}),"
      f" decode step {r['decode_total_gib']:.2f} GiB (temporaries "
      f"{r['decode_temporaries_gib']:.2f}) of {r['hbm_gib']:.0f} GiB HBM: "
      + ("fits" if r["fits"] else "DOES NOT FIT"),
      f"  largest batch at context {s['context']}: {r['max_batch_at_context']}"
      + (f" (compiled: {r['max_batch_decode_total_gib']:.2f} GiB)"
         if r["max_batch_decode_total_gib"] else "")
      + f"; largest context at batch {s['batch']}: "
      + (f"{r['max_context_at_batch']} (extrapolated)" if r["max_context_at_batch"] is not None
         else "not extrapolated (decode memory did not grow with the batch)"),
  ]
  if r.get("estimate"):
    e = r["estimate"]
    lines.append(f"  estimated decode step {e['decode_step_s'] * 1e3:.2f} ms (compute "
                 f"{e['decode_compute_s'] * 1e3:.2f} ms, exposed ICI "
                 f"{e['decode_exposed_comm_s'] * 1e3:.2f} ms): "
                 f"{e['tokens_per_s_per_chip']:.1f} tokens/s per chip")
  lines.append(f"  compile time {r['compile_s']:.1f} s")
  return "\n".join(lines)

