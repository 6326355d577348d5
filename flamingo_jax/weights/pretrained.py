"""Every way a model's parameter tree comes into being: initialised from the seed, pretrained towers
(`init.vision_checkpoint`, `init.lm_checkpoint`), a whole imported model
(`init.flamingo_checkpoint`), stage exports (`export/<vision|lm>`), and a trained run.

A run is self-describing: the trainer records its whole config (paths made absolute) and, for each
frozen tower, where it came from and a fingerprint of its weights (`<workdir>/run.json`,
`record_run`). `load_trained(workdir)` rebuilds exactly that model from the record alone: the frozen
towers as training built them (checked against their fingerprints: a tower that changed since
training is an error, never a silent substitute) and the trainable tree of the latest checkpoint.

Exports and imports are always in the scanned layout; a model with `execution.scan_layers=False`
relays them out when loading. A text-only LM export is regrouped into any gated-block placement.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax import sharding
from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.models.flamingo import Flamingo, example_inputs
from flamingo_jax.models.lm import DecoderLM, layer_plan
from flamingo_jax.weights import layout
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights import store
from flamingo_jax.weights.store import Checkpointer, load_params, save_params


@dataclasses.dataclass(frozen=True)
class ModelParts:
  """A model whose parameters are split into a frozen and a trainable tree, placed on a mesh.

  model, init_inputs: the module and zero inputs for its `init`; trainable_if(path) -> bool: the
  split rule (`tree.is_trainable` for Flamingo); frozen: how the frozen tree is laid out
  (`mesh.frozen`: a key of `sharding.FROZEN_RULES`). Nothing is allocated: the trees below are
  abstract.
  """

  model: nn.Module
  init_inputs: tuple
  trainable_if: Callable[[tuple[str, ...]], bool]
  mesh: jax.sharding.Mesh
  frozen: str = "fsdp"

  def __post_init__(self):
    if self.frozen not in sharding.FROZEN_RULES:
      raise ValueError(f"mesh.frozen={self.frozen!r}: must be one of "
                       f"{tuple(sharding.FROZEN_RULES)}.")

  @functools.cached_property
  def boxed(self) -> tuple[ptree.Params, ptree.Params]:
    """(frozen, trainable) as ShapeDtypeStructs inside their nn.Partitioned boxes."""
    boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0), *self.init_inputs))["params"]
    return ptree.split(boxed, self.trainable_if)

  @functools.cached_property
  def frozen_shardings(self) -> Any:
    return sharding.shardings(self.boxed[0], self.mesh, sharding.FROZEN_RULES[self.frozen])

  @functools.cached_property
  def trainable_shardings(self) -> Any:
    return sharding.shardings(self.boxed[1], self.mesh)

  def abstract_frozen(self, dtype) -> ptree.Params:
    """The frozen tree as sharded ShapeDtypeStructs stored in `dtype`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=s),
                        nn.meta.unbox(self.boxed[0]), self.frozen_shardings)

  def abstract_trainable(self) -> ptree.Params:
    """The trainable tree as sharded ShapeDtypeStructs."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.meta.unbox(self.boxed[1]), self.trainable_shardings)


def initial_params(config: Config, parts: ModelParts,
                   with_trainable: bool = True) -> tuple[ptree.Params, ptree.Params | None]:
  """(frozen, trainable) initialised from `config.seed` directly onto their shardings, frozen cast to
  `train.frozen_dtype`; pretrained towers from `init.*` replace the random frozen ones. Without
  `with_trainable` (resuming) the trainable tree is neither returned nor computed."""
  frozen_dtype = jnp.dtype(config.train.frozen_dtype)
  model_config, init_config = config.model, config.init

  def init():
    params = nn.meta.unbox(parts.model.init(jax.random.key(config.seed), *parts.init_inputs)["params"])
    frozen, trainable = ptree.split(params, parts.trainable_if)
    return jax.tree.map(lambda x: x.astype(frozen_dtype), frozen), trainable if with_trainable else None

  frozen, trainable = jax.jit(init, out_shardings=(
      parts.frozen_shardings, parts.trainable_shardings if with_trainable else None))()
  if init_config.flamingo_checkpoint:  # A whole imported model (IDEFICS): both parts.
    abstract = ptree.merge(_abstract(frozen), parts.abstract_trainable())
    loaded_frozen, loaded_trainable = ptree.split(
        load_scanned(init_config.flamingo_checkpoint, abstract, layout.stacks(model_config),
                     model_config.execution.scan_layers),
        parts.trainable_if)
    frozen = jax.device_put(loaded_frozen, parts.frozen_shardings)
    if with_trainable:
      trainable = jax.device_put(loaded_trainable, parts.trainable_shardings)
  if init_config.vision_checkpoint:
    frozen = {**frozen, "vision": load_scanned(
        init_config.vision_checkpoint, _abstract(frozen["vision"]),
        layout.export_stacks("vision", model_config), model_config.execution.scan_layers)}
  if init_config.lm_checkpoint and "lm" in frozen:
    frozen = _with_pretrained_lm(frozen, init_config.lm_checkpoint, model_config)
  elif init_config.lm_checkpoint and trainable is not None:  # train.freeze_lm=False.
    trainable = jax.device_put(
        _with_pretrained_lm(trainable, init_config.lm_checkpoint, model_config),
        parts.trainable_shardings)
  return jax.device_put(frozen, parts.frozen_shardings), trainable


def _with_pretrained_lm(tree: ptree.Params, path: str, config: FlamingoConfig) -> ptree.Params:
  """`tree` (frozen, or trainable with an unfrozen LM) whose pretrained LM weights come from the
  text-only export at `path`; its gated blocks and new-token rows are kept."""
  pretrained, added = ptree.split(tree["lm"])
  return {**tree, "lm": ptree.merge(load_text_lm(path, config, pretrained), added)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def load_scanned(path: str, abstract: ptree.Params, stack_list, scan_layers: bool) -> ptree.Params:
  """A tree written in the scanned layout (exports, imports) in the layout of `abstract`
  (ShapeDtypeStructs with shardings; unrolled when not `scan_layers`). `stack_list` as in
  `layout.relayout`."""
  if scan_layers:
    return load_params(path, abstract)
  host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  scanned = jax.eval_shape(lambda t: layout.relayout(t, stack_list, scanned=True), abstract)
  scanned = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), scanned)
  return layout.relayout(load_params(path, scanned), stack_list, scanned=False)


def load_text_lm(path: str, config: FlamingoConfig, frozen_lm: ptree.Params) -> ptree.Params:
  """The frozen LM subtree from a text-only LM export (task=lm): its blocks regrouped into this
  config's gated-block placement, in `frozen_lm`'s dtypes; its new-token rows are not used."""
  scanned = dataclasses.replace(config.execution, scan_layers=True)  # Exports are scanned.
  text_lm = DecoderLM(config.lm, scanned, num_extra_tokens=config.num_extra_tokens)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(text_lm.init(
      jax.random.key(0), example_inputs(config)[0])["params"]))
  # Regrouped on the host: the loaded arrays sit on one device, which a multi-device mesh context
  # (train) refuses to slice.
  loaded = jax.device_get(load_params(path, abstract))
  blocks, _ = layout.lm_layers(loaded, layer_plan(config.lm.num_layers, None))
  rest = {k: v for k, v in loaded.items() if k not in ("extra_embed", "extra_head")}
  lm = layout.with_lm_layers(rest, blocks, None, layer_plan(config.lm.num_layers, config.xattn))
  if not config.execution.scan_layers:
    lm = layout.relayout({"lm": lm}, layout.stacks(config), scanned=False)["lm"]
  return jax.tree.map(lambda new, old: new.astype(old.dtype), lm, frozen_lm)


def save_export(workdir: str, name: str, tree: ptree.Params, config: FlamingoConfig) -> str:
  """Writes a stage's tower (`name`: "vision" or "lm") to `<workdir>/export/<name>` in the scanned
  layout, whatever `execution.scan_layers` trained with; returns the path."""
  path = os.path.join(workdir, "export", name)
  save_params(path, layout.relayout(tree, layout.export_stacks(name, config), scanned=True))
  return path


def tower_sources(config: Config) -> dict[str, str]:
  """Where each frozen tower of a run comes from: a checkpoint path, or the seed."""
  init, seed = config.init, f"initialised from seed {config.seed}"
  return {"vision": init.vision_checkpoint or init.flamingo_checkpoint or seed,
          "lm": init.lm_checkpoint or init.flamingo_checkpoint or seed}


def towers(config: Config, frozen: ptree.Params) -> dict[str, dict[str, str]]:
  """{tower: {"source", "fingerprint"}} for every top-level part of the frozen tree."""
  sources = tower_sources(config)
  return {name: {"source": sources.get(name, ""), "fingerprint": ptree.fingerprint(tree)}
          for name, tree in frozen.items()}


def check_towers(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]],
                 workdir: str) -> None:
  """Raises ValueError naming the tower whose weights differ from the run's record."""
  for name, was in recorded.items():
    now = current.get(name)
    if now is None or now["fingerprint"] != was["fingerprint"]:
      got = "nothing" if now is None else f"{now['source']} (fingerprint {now['fingerprint']})"
      raise ValueError(
          f"The frozen {name} tower of the run in {workdir} was {was['source']} (fingerprint "
          f"{was['fingerprint']}), but loading it now gives {got}: the weights changed since "
          "training. Restore that checkpoint, or train a new run on the new tower.")


def record_run(workdir: str, config: Config, frozen: ptree.Params) -> None:
  """Records the run in `<workdir>/run.json`: its config (paths absolute) and its frozen towers. A
  resumed run must find the towers it trained with (else ValueError, before any step runs)."""
  current = towers(config, frozen)
  previous = store.read_run_record(workdir)
  if previous is not None:
    check_towers(previous["towers"], current, workdir)
  if jax.process_index() == 0:
    store.write_run_record(workdir, {"config": config.with_absolute_paths().to_dict(),
                                     "towers": current})


def _run_record(workdir: str) -> dict:
  """`<workdir>/run.json`, or a ValueError saying what to pass instead."""
  record = store.read_run_record(workdir)
  if record is None:
    raise ValueError(f"{workdir} has no {store.RUN_RECORD}: pass the workdir of a training run "
                     "(runs record their config when they start).")
  return record


def flamingo_parts(config: Config, mesh: jax.sharding.Mesh) -> ModelParts:
  """The run's Flamingo split as its trainer splits it, laid out on `mesh` (frozen towers by the
  run's `mesh.frozen`)."""
  return ModelParts(Flamingo(config.model), example_inputs(config.model),
                    ptree.trainable_rule(config.train.freeze_lm), mesh, config.mesh.frozen)


def place(config: Config, params: ptree.Params, mesh: jax.sharding.Mesh) -> ptree.Params:
  """A full Flamingo param tree (host or device arrays) laid out on `mesh` as training lays it out."""
  parts = flamingo_parts(config, mesh)
  frozen, trainable = ptree.split(params, parts.trainable_if)
  return ptree.merge(jax.device_put(frozen, parts.frozen_shardings),
                     jax.device_put(trainable, parts.trainable_shardings))


def load_trained(workdir: str,
                 mesh: jax.sharding.Mesh | None = None) -> tuple[Config, ptree.Params]:
  """(the run's config, full param tree) of the Flamingo-stage run in `workdir`, rebuilt from its
  record alone: the frozen towers as training built them, checked against their recorded
  fingerprints, merged with the trainable tree of the latest checkpoint. Every tree is built or
  restored straight onto its shards on `mesh` (default: the first device), laid out as in training;
  no host ever holds the whole tree."""
  record = _run_record(workdir)
  config = Config.from_dict(record["config"])
  if config.task != "flamingo":
    raise ValueError(f"{workdir} is a task={config.task} run; generation and evaluation need a "
                     "task=flamingo run (its export/ holds the trained tower).")
  parts = flamingo_parts(config, mesh or sharding.make_mesh(devices=jax.devices()[:1]))
  checkpointer = Checkpointer(workdir, keep=1)
  step = checkpointer.latest_step()
  if step is None:
    checkpointer.close()
    raise ValueError(f"No checkpoint under {workdir}/checkpoints yet: the run saves its first one "
                     f"at step {config.train.checkpoint_every}.")
  frozen, _ = initial_params(config, parts, with_trainable=False)
  check_towers(record["towers"], towers(config, frozen), workdir)
  trainable = checkpointer.restore_trainable(step, parts.abstract_trainable())
  checkpointer.close()
  return config, ptree.merge(frozen, trainable)
