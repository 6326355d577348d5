"""The training system: sharded step, accumulation, non-finite skips, optimiser state, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flamingo_jax.models.flamingo import abstract_params
from flamingo_jax.training import train as T
from flamingo_jax.training.losses import token_losses
from flamingo_jax.training.optimizer import make_optimizer
from flamingo_jax.training.setup import build_setup
from flamingo_jax.training.step import TrainState, make_train_step
from flamingo_jax.training.tasks import make_task
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.store import Checkpointer
from tests.builders import init_params, make_batch, tiny_config
from tests.configs import train_small

TRAIN_CONFIG = "tests/configs/train_small.py"


def _leaves_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_step_on_2x2x2_mesh_matches_one_device(tmp_path):
  config = train_small.config("one", **{"train.num_steps": 2})
  sharded = T.train(config.replace({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}),
                    str(tmp_path / "mesh"))
  single = T.train(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  assert int(sharded.step) == int(single.step) == 2
  # Same maths, different reduction orders across 8 devices: float32 rounding only.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4),
               jax.device_get(sharded.trainable), jax.device_get(single.trainable))
  head = sharded.trainable["lm"]["segment_0"]["xattn"]["ffw"]["up"]["kernel"]
  assert head.sharding.spec == jax.P(None, "fsdp", "tensor")  # [layers, embed, mlp] really split.


def _step_pieces(weights, optimizer=None, micro_batches=1):
  config = tiny_config()
  task = make_task("flamingo", config)
  frozen, trainable = ptree.split(init_params(config))
  optimizer = optimizer or optax.apply_if_finite(optax.sgd(1.0), 10**6)  # Plain SGD, lr 1.
  step = jax.jit(make_train_step(task, optimizer, lambda s: 1.0, weights,
                                 micro_batches=micro_batches))
  state = TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable),
                     jax.random.key_data(jax.random.key(0)))
  return config, task.model, frozen, state, step


def _batches(config):
  def one(seed, length, images, positions):
    tokens, images_, phi = make_batch(config, batch=4, length=length, num_images=images,
                                      image_positions=positions, seed=seed)
    return {"tokens": tokens, "images": images_, "phi": phi,
            "labels": jnp.roll(tokens, -1, axis=1),
            "loss_mask": jnp.ones(tokens.shape, jnp.float32).at[:, -1].set(0)}
  return {"interleaved": one(0, 16, 2, (3, 9)), "pairs": one(1, 8, 1, (1,))}


def _open_gates(state):
  trainable = jax.tree.map(lambda a: a, state.trainable)
  xattn = trainable["lm"]["segment_0"]["xattn"]
  xattn["attn_gate"] = xattn["attn_gate"] + 0.5
  xattn["ffw_gate"] = xattn["ffw_gate"] + 0.5
  return state.replace(trainable=trainable)


def test_accumulation_is_the_weighted_sum_of_per_dataset_gradients():
  weights = {"interleaved": 1.0, "pairs": 0.2}
  config, model, frozen, state, step = _step_pieces(weights)
  state = _open_gates(state)
  batches = _batches(config)
  new_state, metrics = step(state, frozen, batches)
  applied = jax.tree.map(lambda old, new: old - new, state.trainable, new_state.trainable)  # SGD, lr 1

  def dataset_loss(trainable, batch):
    logits = model.apply({"params": ptree.merge(frozen, trainable)}, batch["tokens"], batch["images"],
                         batch["phi"])
    mask = batch["loss_mask"]
    return jnp.sum(token_losses(logits, batch["labels"], 0.0) * mask) / jnp.sum(mask)
  grads = {name: jax.jit(jax.grad(dataset_loss))(state.trainable, batches[name]) for name in weights}
  expected = jax.tree.map(lambda a, b: weights["interleaved"] * a + weights["pairs"] * b,
                          grads["interleaved"], grads["pairs"])
  for name in weights:
    np.testing.assert_allclose(metrics[f"loss/{name}"],
                               jax.jit(dataset_loss)(state.trainable, batches[name]),
                               rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), applied, expected)
  assert np.abs(np.asarray(applied["resampler"]["latents"])).max() > 0

  # Two micro-batches per dataset give the same update as one.
  _, _, _, _, micro_step = _step_pieces(weights, micro_batches=2)
  micro_state, _ = micro_step(state, frozen, batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               micro_state.trainable, new_state.trainable)


def test_non_finite_update_is_skipped_and_counted():
  optimizer = make_optimizer(train_small.config(**{"optimizer.warmup_steps": 0}).optimizer)
  config, _, frozen, state, step = _step_pieces({"interleaved": float("nan"), "pairs": 0.2},
                                                optimizer)
  batches = _batches(config)
  after, metrics = step(state, frozen, batches)
  assert int(metrics["skipped_updates"]) == 1 and not np.isfinite(metrics["loss"])
  _leaves_equal(after.trainable, state.trainable)
  _, _, _, _, good_step = _step_pieces({"interleaved": 1.0, "pairs": 0.2}, optimizer)
  again, metrics = good_step(after, frozen, batches)
  assert int(metrics["skipped_updates"]) == 1 and np.isfinite(metrics["loss"])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), again.trainable, after.trainable)
  assert any(jax.tree.leaves(changed))


def test_optimizer_state_covers_the_trainable_tree_only():
  setup = build_setup(train_small.config())
  opt_state = setup.abstract_state.opt_state
  trainable = ptree.count(setup.abstract_state.trainable)
  frozen = ptree.count(ptree.split(abstract_params(setup.model_config))[0])
  assert frozen > trainable > 0
  arrays = [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]
  assert sum(x.size for x in arrays) == 2 * trainable  # Adam's mu and nu, nothing else.
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
  assert not any("vision" in p or "block_" in p for p in paths)


def test_restore_onto_a_different_mesh(tmp_path):
  config = train_small.config(**{"train.num_steps": 3, "mesh.data": 8})
  final = T.train(config, str(tmp_path))
  setup = build_setup(config.replace({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  checkpointer = Checkpointer(str(tmp_path), keep=3)
  restored, data_state = checkpointer.restore(3, setup.abstract_state)
  checkpointer.close()
  _leaves_equal(restored.trainable, final.trainable)
  _leaves_equal(restored.opt_state, final.opt_state)
  kernel = restored.trainable["lm"]["segment_0"]["xattn"]["ffw"]["up"]["kernel"]
  assert kernel.sharding.spec == jax.P(None, "fsdp", "tensor")
  assert data_state == {"step": 3}


def _train_cli(workdir, *overrides, config="one"):
  return subprocess.Popen(
      [sys.executable, "-m", "flamingo_jax.training.train", f"--config={TRAIN_CONFIG}:{config}",
       f"--workdir={workdir}", *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _final_checkpoint(workdir, step, config="one"):
  setup = build_setup(train_small.config(config))
  checkpointer = Checkpointer(str(workdir), keep=3)
  assert checkpointer.latest_step() == step
  state, data_state = checkpointer.restore(step, setup.abstract_state)
  checkpointer.close()
  return state, data_state


def test_resume_after_sigkill_is_bit_identical(tmp_path):
  """With three datasets, two of them packed, in one LM pass per update."""
  steps = ["--config.train.num_steps=30", "--config.train.checkpoint_every=4"]
  straight = _train_cli(tmp_path / "straight", *steps, config="packed")
  assert straight.wait(timeout=300) == 0, straight.stdout.read()

  killed = _train_cli(tmp_path / "killed", *steps, config="packed")
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert killed.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  finished = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert finished and finished[-1] < 30

  resumed = _train_cli(tmp_path / "killed", *steps, config="packed")
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out
  assert f"Resumed from step {finished[-1]}" in out
  a, data_a = _final_checkpoint(tmp_path / "straight", 30, "packed")
  b, data_b = _final_checkpoint(tmp_path / "killed", 30, "packed")
  _leaves_equal(a, b)  # Step, trainable params, optimiser state and RNG.
  assert data_a == data_b == {"step": 30}


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  run = _train_cli(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
                   "--config.train.log_every=1")
  deadline = time.time() + 300
  metrics = tmp_path / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    assert run.poll() is None and time.time() < deadline, run.stdout.read()
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  out = run.communicate(timeout=120)[0]
  assert run.returncode == 0, out
  last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
  state, data_state = _final_checkpoint(tmp_path, last_logged)
  assert int(state.step) == last_logged == data_state["step"]
  assert f"SIGTERM: saved step {last_logged}" in out


def test_two_processes_on_localhost_match_one_process(tmp_path):
  port = 20000 + os.getpid() % 20000
  env = dict(os.environ, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4"))
  common = ["--config.train.num_steps=4", "--config.train.checkpoint_every=4"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "flamingo_jax.training.train", f"--config={TRAIN_CONFIG}:two",
       f"--workdir={tmp_path / 'two'}", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}", *common],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
  one = _train_cli(tmp_path / "one", *common, config="two")
  for p in (*procs, one):
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out
  a, data_a = _final_checkpoint(tmp_path / "two", 4)
  b, data_b = _final_checkpoint(tmp_path / "one", 4)
  # Same global batches; 2 x 4 devices vs 1 x 8 devices: identical programs up to reduction order.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), a, b)
  assert data_a == data_b
