r"""Flamingo training: the same command on a laptop CPU, one GPU host or every host of a TPU pod.

  python -m flamingo_jax.training.train --config experiments/flamingo.py:tiny --workdir /tmp/run

The story, in order: processes -> mesh -> input -> model and shardings -> state (restored from the
workdir if a checkpoint is there, else initialised) -> compiled update -> loop (log, checkpoint, stop
on SIGTERM). Multi-host: pass --coordinator_address/--num_processes/--process_id (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on Cloud TPU and SLURM,
--distributed=auto lets JAX find them. Each process feeds only its share of every batch.
"""

from __future__ import annotations

import ctypes
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import mixture as mixture_lib
from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.config.schema import ConfigError
from flamingo_jax.training import xla_flags
from flamingo_jax.training.metrics import MetricWriter, measured_cpu_flops, peak_flops_per_device
from flamingo_jax.training.preemption import PreemptionGuard
from flamingo_jax.training.setup import build_setup, jit_train_step
from flamingo_jax.training.step import TrainState
from flamingo_jax.weights import pretrained
from flamingo_jax.weights.store import Checkpointer


def define_flags() -> None:
  """The command-line flags (defined only when this module is the program)."""
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("workdir", None, "Checkpoints and logs; a run resumes from it.")
  sharding.define_process_flags()
  flags.DEFINE_bool("tpu_flags", True, "Add xla_flags.TPU_FLAGS (overlapped collectives) to "
                    "LIBTPU_INIT_ARGS; a flag already there keeps its value.")
  flags.DEFINE_bool("cpu_flags", True, "Add xla_flags.CPU_FLAGS (memory-optimized scheduling) to "
                    "XLA_FLAGS; a flag already there keeps its value.")
  flags.mark_flags_as_required(["config", "workdir"])


def release_freed_host_memory() -> None:
  """Returns the host memory malloc holds but no longer uses (the compiler's, after a compile) to
  the operating system (glibc's malloc_trim), so that the step's buffers do not stack on top of it
  in the process's peak. Does nothing where glibc is not the C library."""
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return
  libc.malloc_trim(0)


def train(config: Config, workdir: str, devices=None) -> TrainState:
  """Runs (or resumes) training to `config.train.num_steps` on `devices` (default: all); returns the
  final state. The workdir records the run (`weights.pretrained.record_run`)."""
  setup = build_setup(config, devices)
  mixture = mixture_lib.from_config(config)
  checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints,
                              keep_every=config.train.keep_every)
  writer = MetricWriter(workdir)
  guard = PreemptionGuard()

  with sharding.active(setup.mesh):
    latest = checkpointer.latest_step()
    frozen, trainable = pretrained.initial_params(config, setup.parts, with_trainable=latest is None)
    pretrained.record_run(workdir, config, frozen)
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

    peak = peak_flops_per_device()  # (FLOP/s, source), or None: MFU not logged (warned once).
    if peak and jax.process_index() == 0:
      print(f"MFU against {peak[1]} per device", flush=True)
    # On CPU also the step's model FLOP/s over this host's own measured matmul rate: how much of
    # what our software can do the step does (overheads), not hardware use.
    matmul_rate = (measured_cpu_flops() / len(jax.local_devices())
                   if jax.local_devices()[0].platform == "cpu" else None)
    packs = config.data.packs()  # (Examples per row, their tokens): examples/s and model FLOPs.
    flops_by_datasets = {}  # FLOPs of one update per set of datasets (fixed shapes: computed once).
    step = first_step = int(state.step)
    last_log_time, last_log_step = time.perf_counter(), step
    while step < config.train.num_steps:
      local = next(mixture)
      batches = jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(setup.batch_sharding, x), local)
      state, metrics = train_step(state, frozen, batches)
      if step == first_step:  # This process's first update: its compile is done.
        release_freed_host_memory()
      step += 1
      stop = guard.should_stop()
      if step % config.train.log_every == 0 or step == config.train.num_steps or stop:
        metrics = jax.device_get(metrics)
        seconds = (time.perf_counter() - last_log_time) / (step - last_log_step)
        examples = sum(b["tokens"].shape[0] * packs[name][0]
                       for name, b in local.items()) * jax.process_count()
        tokens = sum(b["tokens"].size for b in local.values()) * jax.process_count()
        names = tuple(sorted(local))
        if names not in flops_by_datasets:
          flops_by_datasets[names] = setup.task.step_flops(setup.model_config, local,
                                                           jax.process_count(), packs)
        model_flops = flops_by_datasets[names]
        metrics.update({
            "examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds,
            **{f"data/{k}": v for k, v in mixture.counters().items()},
        })
        if peak:
          metrics["mfu"] = model_flops / seconds / (peak[0] * jax.device_count())
        if matmul_rate:
          metrics["matmul_efficiency"] = model_flops / seconds / (matmul_rate * jax.device_count())
        writer.write(step, metrics)
        if jax.process_index() == 0:
          mfu = f"  mfu {metrics['mfu']:.3f}" if peak else ""
          mfu += f"  matmul_efficiency {metrics['matmul_efficiency']:.3f}" if matmul_rate else ""
          print(f"step {step}/{config.train.num_steps}  loss {metrics['loss']:.4f}  grad_norm "
                f"{metrics['grad_norm']:.3f}  {metrics['examples_per_s']:.1f} examples/s{mfu}",
                flush=True)
        last_log_time, last_log_step = time.perf_counter(), step
      if step % config.train.checkpoint_every == 0 or step == config.train.num_steps or stop:
        checkpointer.save(step, state, mixture.get_state())
      if stop:
        print(f"SIGTERM: saved step {step}, stopping.", flush=True)
        break
    checkpointer.wait()
    checkpointer.close()
    if setup.task.export and step >= config.train.num_steps:
      path = pretrained.save_export(workdir, setup.task.export,
                                    setup.task.exported(state.trainable), setup.model_config)
      print(f"Exported {setup.task.export} to {path}", flush=True)
    writer.close()
    guard.restore_handler()
  return state


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Keep the console to progress lines.
  config = Config.from_cli(f.config)  # Checked before anything starts.
  if f.tpu_flags:
    xla_flags.set_tpu_flags()  # Before the first JAX call loads libtpu.
  if f.cpu_flags:
    xla_flags.set_cpu_flags()  # Before the first JAX call starts a backend.
  try:
    sharding.initialize_processes(f.distributed, f.coordinator_address, f.num_processes,
                                  f.process_id)
  except ValueError as e:  # Process flags that do not fit together.
    raise SystemExit(f"error: {e}") from None
  try:
    train(config, f.workdir)
  except ConfigError as e:  # The config against these devices (setup's checks).
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  define_flags()
  app.run(main)
