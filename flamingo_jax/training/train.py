r"""Flamingo training: the same command on a laptop CPU, one GPU host or every host of a TPU pod.

  python -m flamingo_jax.train --config experiments/flamingo.py:tiny --workdir /tmp/run

The story, in order: processes -> mesh -> input -> model and shardings -> state (restored from the
workdir if a checkpoint is there, else initialised) -> compiled update -> loop (log, checkpoint, stop
on SIGTERM). Multi-host: pass --coordinator_address/--num_processes/--process_id (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on Cloud TPU and SLURM,
--distributed=auto lets JAX find them. Each process feeds only its share of every batch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from flamingo_jax import sharding
from flamingo_jax import params as P
from flamingo_jax.checkpointing import Checkpointer, PreemptionGuard, load_params, save_params
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.metrics import MetricWriter, peak_flops_per_device
from flamingo_jax.lm import DecoderLM, layer_plan
from flamingo_jax.model import example_inputs
from flamingo_jax.tasks import Task, make_task
from flamingo_jax.optimizer import learning_rate_schedule, make_optimizer
from flamingo_jax.train_step import TrainState, make_train_step

def define_flags() -> None:
  """The command-line flags (defined only when this module is the program)."""
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("workdir", None, "Checkpoints and logs; a run resumes from it.")
  flags.DEFINE_enum("distributed", "env", ["env", "auto", "off"],
                    "env: use the flags / JAX_* variables if set; auto: let JAX detect the cluster "
                    "(TPU pod, SLURM); off: single process.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.mark_flags_as_required(["config", "workdir"])


def initialize_processes(mode: str, coordinator: str | None, num_processes: int | None,
                         process_id: int | None) -> None:
  """jax.distributed from the flags, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; `mode="auto"` lets JAX detect a TPU pod or SLURM job; no coordinator: 1 process."""
  if mode == "off":
    return
  if mode == "auto":
    jax.distributed.initialize()
    return
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    num = num_processes or int(os.environ["JAX_NUM_PROCESSES"])
    index = process_id if process_id is not None else int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator, num_processes=num, process_id=index)


def build_mixture(config: ml_collections.ConfigDict, model_config: FlamingoConfig,
                  split: str = "train"):
  """The input stream of this process (its share of every dataset's global batch); the datasets
  named in `data.exclude` are left out."""
  data = config.data
  datasets = selected_datasets(data)
  common = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if data.source == "synthetic":
    from data_pipelines.synthetic import SyntheticMixture
    return SyntheticMixture(datasets, image_size=model_config.vision.image_size,
                            image_token_id=model_config.image_token_id,
                            eoc_token_id=model_config.eoc_token_id, seed=data.seed, split=split,
                            accumulation=data.accumulation, **common)
  if data.source == "arrayrecord":
    from data_pipelines.mixture import build_mixture as build_arrayrecord_mixture
    from data_pipelines.tokenizer import Tokenizer
    streams = {}
    for name, spec in datasets.items():
      eval_path = spec.pop("eval_path")
      streams[name] = {**spec, "path": spec["path"] if split == "train" else eval_path}
    stream_config = ml_collections.ConfigDict(dict(
        seed=data.seed, num_workers=data.num_workers, accumulation=data.accumulation,
        datasets=streams))
    return build_arrayrecord_mixture(stream_config, image_size=model_config.vision.image_size,
                                     tokenizer=Tokenizer(data.tokenizer, model_config.image_token_id,
                                                         model_config.eoc_token_id),
                                     split=split, **common)
  raise ValueError(f"data.source={data.source!r}: use 'synthetic' or 'arrayrecord'.")


def selected_datasets(data: ml_collections.ConfigDict) -> dict[str, dict]:
  """{name: spec} of `data.datasets` without those named in `data.exclude` (comma-separated; the
  no-interleaved-data ablation is `data.exclude=interleaved`)."""
  excluded = {name.strip() for name in data.exclude.split(",") if name.strip()}
  unknown = sorted(excluded - set(data.datasets))
  if unknown:
    raise ValueError(f"data.exclude names unknown dataset(s) {', '.join(unknown)}; the datasets "
                     f"are {', '.join(data.datasets)}.")
  if excluded >= set(data.datasets):
    raise ValueError(f"data.exclude={data.exclude!r} leaves no dataset to train on.")
  return {name: spec.to_dict() for name, spec in data.datasets.items() if name not in excluded}


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from the config (no arrays allocated yet)."""

  mesh: jax.sharding.Mesh
  model_config: FlamingoConfig
  task: Task
  frozen_shardings: Any
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings, for restore.
  batch_sharding: jax.sharding.NamedSharding
  optimizer: Any
  abstract_frozen: Any = None  # ShapeDtypeStructs of the frozen tree (train.frozen_dtype, sharded).


def build_setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
  mesh = sharding.make_mesh(**config.mesh, devices=devices)
  model_config = FlamingoConfig.from_dict(config.model)
  task = make_task(config.task, model_config, z_loss=config.train.z_loss,
                   freeze_lm=config.train.freeze_lm)
  if config.task == "contrastive" and config.train.micro_batches != 1:
    raise ValueError("train.micro_batches must be 1 for task=contrastive: the in-batch negatives "
                     "of a micro-batch would change the loss.")
  optimizer = make_optimizer(config.optimizer)
  boxed = jax.eval_shape(lambda: task.model.init(jax.random.key(0), *task.init_inputs))["params"]
  frozen_boxed, trainable_boxed = P.split(boxed, task.trainable_if)
  to_shardings = lambda boxed: sharding.shardings(boxed, mesh)  # noqa: E731
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  opt_state_boxed = jax.eval_shape(optimizer.init, trainable_boxed)  # Boxes carry the partitioning.
  state_shardings = TrainState(
      step=replicated, trainable=to_shardings(trainable_boxed),
      opt_state=to_shardings(opt_state_boxed), rng=replicated)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), trainable=nn.meta.unbox(trainable_boxed),
                 opt_state=nn.meta.unbox(opt_state_boxed),
                 rng=jax.ShapeDtypeStruct((2,), jnp.uint32)),
      state_shardings)
  frozen_shardings = to_shardings(frozen_boxed)
  frozen_dtype = jnp.dtype(config.train.frozen_dtype)
  abstract_frozen = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, frozen_dtype, sharding=s),
      nn.meta.unbox(frozen_boxed), frozen_shardings)
  return Setup(mesh, model_config, task, frozen_shardings, state_shardings, abstract_state,
               jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))), optimizer,
               abstract_frozen)


def jit_train_step(config: ml_collections.ConfigDict, setup: Setup,
                   loss_weights: dict[str, float]):
  """The trainer's update, jitted on the setup's shardings (state donated): called by the loop, and
  lowered for a target topology by `flamingo_jax.aot`."""
  return jax.jit(
      make_train_step(setup.task, setup.optimizer, learning_rate_schedule(config.optimizer),
                      loss_weights, micro_batches=config.train.micro_batches),
      in_shardings=(setup.state_shardings, setup.frozen_shardings, setup.batch_sharding),
      out_shardings=(setup.state_shardings, jax.sharding.NamedSharding(setup.mesh, jax.P())),
      donate_argnums=(0,))


def initial_params(config: ml_collections.ConfigDict, setup: Setup,
                   with_trainable: bool = True) -> tuple[P.Params, P.Params | None]:
  """(frozen, trainable) initialised from `config.seed` directly onto their shardings, frozen cast to
  `train.frozen_dtype`; pretrained towers from `init.*` replace the random frozen ones. Without
  `with_trainable` (resuming) the trainable tree is neither returned nor computed."""
  task = setup.task
  frozen_dtype = jnp.dtype(config.train.frozen_dtype)

  def init():
    params = nn.meta.unbox(task.model.init(jax.random.key(config.seed), *task.init_inputs)["params"])
    frozen, trainable = P.split(params, task.trainable_if)
    return jax.tree.map(lambda x: x.astype(frozen_dtype), frozen), trainable if with_trainable else None

  frozen, trainable = jax.jit(init, out_shardings=(
      setup.frozen_shardings, setup.state_shardings.trainable if with_trainable else None))()
  if config.init.flamingo_checkpoint:  # A whole imported model (IDEFICS): both parts.
    if config.init.vision_checkpoint or config.init.lm_checkpoint:
      raise ValueError("config.init.flamingo_checkpoint holds the towers too; leave "
                       "config.init.vision_checkpoint and config.init.lm_checkpoint empty.")
    abstract = P.merge(_abstract(frozen), setup.abstract_state.trainable)
    loaded_frozen, loaded_trainable = P.split(
        load_scanned(config.init.flamingo_checkpoint, abstract, P.stacks(setup.model_config),
                     setup.model_config.execution.scan_layers),
        task.trainable_if)
    frozen = jax.device_put(loaded_frozen, setup.frozen_shardings)
    if with_trainable:
      trainable = jax.device_put(loaded_trainable, setup.state_shardings.trainable)
  if config.init.vision_checkpoint:
    frozen = {**frozen, "vision": load_scanned(
        config.init.vision_checkpoint, _abstract(frozen["vision"]),
        export_stacks("vision", setup.model_config), setup.model_config.execution.scan_layers)}
  if config.init.lm_checkpoint and "lm" in frozen:
    frozen = _with_pretrained_lm(frozen, config.init.lm_checkpoint, setup.model_config)
  elif config.init.lm_checkpoint and trainable is not None:  # train.freeze_lm=False.
    trainable = jax.device_put(
        _with_pretrained_lm(trainable, config.init.lm_checkpoint, setup.model_config),
        setup.state_shardings.trainable)
  return jax.device_put(frozen, setup.frozen_shardings), trainable


def _with_pretrained_lm(tree: P.Params, path: str, config: FlamingoConfig) -> P.Params:
  """`tree` (frozen, or trainable with an unfrozen LM) whose pretrained LM weights come from the
  text-only export at `path`; its gated blocks and new-token rows are kept."""
  pretrained, added = P.split(tree["lm"])
  return {**tree, "lm": P.merge(load_text_lm(path, config, pretrained), added)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def export_stacks(name: str, config: FlamingoConfig) -> list[tuple[tuple[str, ...], int]]:
  """The layer stacks of an export (`lm`: a text-only LM, `vision`: a ViT) for `params.relayout`."""
  return {"lm": [(("segment_0",), config.lm.num_layers)],
          "vision": [(("blocks",), config.vision.num_layers)]}[name]


def load_scanned(path: str, abstract: P.Params, stack_list, scan_layers: bool) -> P.Params:
  """A tree written in the scanned layout (exports, `import_weights`) in the layout of `abstract`
  (ShapeDtypeStructs with shardings; unrolled when not `scan_layers`). `stack_list` as in
  `params.relayout`."""
  if scan_layers:
    return load_params(path, abstract)
  host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  scanned = jax.eval_shape(lambda t: P.relayout(t, stack_list, scanned=True), abstract)
  scanned = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), scanned)
  return P.relayout(load_params(path, scanned), stack_list, scanned=False)


def load_text_lm(path: str, config: FlamingoConfig, frozen_lm: P.Params) -> P.Params:
  """The frozen LM subtree from a text-only LM export (task=lm): its blocks regrouped into this
  config's gated-block placement, in `frozen_lm`'s dtypes; its new-token rows are not used."""
  scanned = dataclasses.replace(config.execution, scan_layers=True)  # Exports are scanned.
  text_lm = DecoderLM(config.lm, scanned, num_extra_tokens=config.num_new_tokens)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(text_lm.init(
      jax.random.key(0), example_inputs(config)[0])["params"]))
  # Regrouped on the host: the loaded arrays sit on one device, which a multi-device mesh context
  # (train) refuses to slice.
  loaded = jax.device_get(load_params(path, abstract))
  blocks, _ = P.lm_layers(loaded, layer_plan(config.lm.num_layers, None))
  rest = {k: v for k, v in loaded.items() if k not in ("extra_embed", "extra_head")}
  lm = P.with_lm_layers(rest, blocks, None, layer_plan(config.lm.num_layers, config.xattn))
  if not config.execution.scan_layers:
    lm = P.relayout({"lm": lm}, P.stacks(config), scanned=False)["lm"]
  return jax.tree.map(lambda new, old: new.astype(old.dtype), lm, frozen_lm)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> TrainState:
  """Runs (or resumes) training to `config.train.num_steps` on `devices` (default: all); returns the
  final state."""
  setup = build_setup(config, devices)
  mixture = build_mixture(config, setup.model_config)
  checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints,
                              keep_every=config.train.keep_every)
  writer = MetricWriter(workdir)
  guard = PreemptionGuard()

  with sharding.active(setup.mesh):
    latest = checkpointer.latest_step()
    frozen, trainable = initial_params(config, setup, with_trainable=latest is None)
    if latest is None:
      opt_state = jax.jit(setup.optimizer.init,
                          out_shardings=setup.state_shardings.opt_state)(trainable)
      state = TrainState(jnp.zeros((), jnp.int32), trainable, opt_state,
                         jax.random.key_data(jax.random.key(config.seed + 1)))
      state = jax.device_put(state, setup.state_shardings)
    else:
      state, data_state = checkpointer.restore(latest, setup.abstract_state)
      mixture.set_state(data_state)
      print(f"Resumed from step {latest} in {workdir}", flush=True)

    train_step = jit_train_step(config, setup, mixture.loss_weights)

    peak, peak_source = peak_flops_per_device()
    flops_by_datasets = {}  # FLOPs of one update per set of datasets (fixed shapes: computed once).
    step = int(state.step)
    last_log_time, last_log_step = time.perf_counter(), step
    while step < config.train.num_steps:
      local = next(mixture)
      batches = jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(setup.batch_sharding, x), local)
      state, metrics = train_step(state, frozen, batches)
      step += 1
      stop = guard.should_stop()
      if step % config.train.log_every == 0 or step == config.train.num_steps or stop:
        metrics = jax.device_get(metrics)
        seconds = (time.perf_counter() - last_log_time) / (step - last_log_step)
        examples = sum(b["tokens"].shape[0] for b in local.values()) * jax.process_count()
        tokens = sum(b["tokens"].size for b in local.values()) * jax.process_count()
        names = tuple(sorted(local))
        if names not in flops_by_datasets:
          flops_by_datasets[names] = setup.task.step_flops(setup.model_config, local,
                                                           jax.process_count())
        model_flops = flops_by_datasets[names]
        metrics.update({
            "examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds,
            "mfu": model_flops / seconds / (peak * jax.device_count()),
            **{f"data/{k}": v for k, v in mixture.counters().items()},
        })
        writer.write(step, metrics)
        if jax.process_index() == 0:
          print(f"step {step}/{config.train.num_steps}  loss {metrics['loss']:.4f}  grad_norm "
                f"{metrics['grad_norm']:.3f}  {metrics['examples_per_s']:.1f} examples/s  "
                f"mfu {metrics['mfu']:.3f} (peak: {peak_source})", flush=True)
        last_log_time, last_log_step = time.perf_counter(), step
      if step % config.train.checkpoint_every == 0 or step == config.train.num_steps or stop:
        checkpointer.save(step, state, mixture.get_state())
      if stop:
        print(f"SIGTERM: saved step {step}, stopping.", flush=True)
        break
    checkpointer.wait()
    checkpointer.close()
    if setup.task.export and step >= config.train.num_steps:
      export = os.path.join(workdir, "export", setup.task.export)
      tree = state.trainable if setup.task.name == "lm" else state.trainable[setup.task.export]
      # Exports are always in the scanned layout, whatever execution.scan_layers trained with.
      save_params(export, P.relayout(tree, export_stacks(setup.task.export, setup.model_config),
                                     scanned=True))
      print(f"Exported {setup.task.export} to {export}", flush=True)
    writer.close()
    guard.restore_handler()
  return state


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Keep the console to progress lines.
  initialize_processes(f.distributed, f.coordinator_address, f.num_processes, f.process_id)
  train(f.config, f.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
