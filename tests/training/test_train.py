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
import pytest

from data_pipelines import demo
from data_pipelines import mixture as mixture_lib
from flamingo_jax import sharding
from flamingo_jax.config import Config
from flamingo_jax.models.flamingo import abstract_params
from flamingo_jax.training import train as T
from flamingo_jax.training.losses import token_losses
from flamingo_jax.training.metrics import read_metrics
from flamingo_jax.training.optimizer import make_optimizer
from flamingo_jax.training.setup import build_setup
from flamingo_jax.training.step import TrainState, make_train_step
from flamingo_jax.training.tasks import make_task
from flamingo_jax.weights import pretrained
from flamingo_jax.weights import tree as ptree
from flamingo_jax.weights.store import Checkpointer
from tests.builders import DEMO_SIZES, init_params, make_batch, tiny_config
from tests.configs import train_small

TRAIN_CONFIG = "tests/configs/train_small.py"
# Plain SGD at a constant rate, unclipped, every step logged: each update is -0.1 x the gradient, so
# a gradient off by any factor changes the parameters (Adam's normalised updates would hide it).
SGD = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1, "optimizer.warmup_steps": 0,
       "optimizer.clip_norm": 1e9, "train.log_every": 1}
PARAMS_TOLERANCE = dict(atol=2e-5, rtol=1e-4)  # float32 rounding: 8 devices against 1.


def _leaves_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _tolerance(x):
  """The largest difference PARAMS_TOLERANCE allows in an array like x."""
  return PARAMS_TOLERANCE["atol"] + PARAMS_TOLERANCE["rtol"] * np.abs(x).max()


def _logged(workdir):
  """[(loss, grad_norm)] of every step, from the run's metrics.jsonl."""
  return [(r["loss"], r["grad_norm"]) for r in read_metrics(str(workdir))]


def _sgd_on_one_device(config, steps):
  """`steps` plain SGD steps computed here directly on one device (whole batches of the config's
  one dataset, jax.grad of lambda x its mean token loss): ([(loss, grad_norm)] of every step, the
  initial trainable tree, the final one)."""
  setup = build_setup(config, jax.devices()[:1])
  with sharding.active(setup.mesh):
    frozen, trainable = pretrained.initial_params(config, setup.parts)
  (name, spec), = config.data.selected().items()
  mixture = mixture_lib.from_config(config)

  @jax.jit
  def value_and_grad(trainable, frozen, batch):
    def loss(trainable):
      values, weights = setup.task.losses(setup.task.model, ptree.merge(frozen, trainable), batch)
      return spec.loss_weight * jnp.sum(values * weights) / setup.task.total_weight(batch)
    return jax.value_and_grad(loss)(trainable)
  initial, logged = jax.device_get(trainable), []
  for _ in range(steps):
    loss, grads = value_and_grad(trainable, frozen, next(mixture)[name])
    logged.append((float(loss), float(optax.tree.norm(grads))))
    trainable = jax.tree.map(lambda p, g: p - config.optimizer.learning_rate * g, trainable, grads)
  return logged, initial, jax.device_get(trainable)


def test_step_on_2x2x2_mesh_matches_one_device(tmp_path):
  """Two SGD steps of the trainer on a 2 x 2 x 2 mesh against the same steps computed directly on
  one device: the loss and gradient norm of both, and the parameters after them."""
  config = train_small.config("one", **SGD, **{"train.num_steps": 2})
  sharded = T.train(config.replace({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}),
                    str(tmp_path))
  logged, initial, expected = _sgd_on_one_device(config, steps=2)
  # A gradient scaled by a wrong mean over devices (x2, x8) fails this at rtol 1e-5.
  np.testing.assert_allclose(_logged(tmp_path), logged, rtol=1e-5)
  actual = jax.device_get(sharded.trainable)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAMS_TOLERANCE), actual, expected)
  # The gates open in step 1, so every leaf has a gradient in step 2 and moves by 10x its tolerance
  # or more: a gradient off by a factor in any one leaf fails the comparison above.
  moved = jax.tree.map(lambda new, old: np.abs(new - old).max() / _tolerance(new), expected,
                       initial)
  assert min(jax.tree.leaves(moved)) > 10, moved
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


def _flags(overrides):
  """Command-line flags of flat config overrides."""
  return [f"--config.{key}={value}" for key, value in overrides.items()]


def _train_cli(workdir, *flags, config="one"):
  return subprocess.Popen(
      [sys.executable, "-m", "flamingo_jax.training.train", f"--config={TRAIN_CONFIG}:{config}",
       f"--workdir={workdir}", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _final_checkpoint(workdir, step, config: Config):
  setup = build_setup(config)
  checkpointer = Checkpointer(str(workdir), keep=3)
  assert checkpointer.latest_step() == step
  state, data_state = checkpointer.restore(step, setup.abstract_state)
  checkpointer.close()
  return state, data_state


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  """The demo corpus (ArrayRecord shards of the three kinds, tokenizer), built once (~5 s)."""
  root = tmp_path_factory.mktemp("demo")
  demo.build(str(root), sizes=DEMO_SIZES)
  return root


def test_resume_after_sigkill_is_bit_identical(tmp_path, demo_root):
  """grain streams of the demo corpus's shards, three datasets, two of them packed, in one LM pass
  per update: killed after a checkpoint and resumed, the run ends with the uninterrupted run's
  parameters, optimiser state, RNG and data position."""
  config = f"packed,corpus={demo_root}"
  steps = ["--config.train.num_steps=12", "--config.train.checkpoint_every=4"]
  straight = _train_cli(tmp_path / "straight", *steps, config=config)
  killed = _train_cli(tmp_path / "killed", *steps, config=config)
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert killed.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  finished = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert finished and finished[-1] < 12

  resumed = _train_cli(tmp_path / "killed", *steps, config=config)
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out
  assert f"Resumed from step {finished[-1]}" in out
  out = straight.communicate(timeout=300)[0]
  assert straight.returncode == 0, out
  a, data_a = _final_checkpoint(tmp_path / "straight", 12, train_small.config(config))
  b, data_b = _final_checkpoint(tmp_path / "killed", 12, train_small.config(config))
  _leaves_equal(a, b)  # Step, trainable params, optimiser state and RNG.
  assert data_a == data_b
  # grain's positions: 12 batches of 8 documents, 16 pairs and 16 clips, no record skipped.
  assert (data_a["step"], data_a["streams"]) == (12, {"interleaved": {"next_index": 96},
                                                      "pairs": {"next_index": 192},
                                                      "video": {"next_index": 192}})


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
  state, data_state = _final_checkpoint(tmp_path, last_logged, train_small.config())
  assert int(state.step) == last_logged == data_state["step"]
  assert f"SIGTERM: saved step {last_logged}" in out


def test_two_processes_on_localhost_match_one_process(tmp_path):
  """Four SGD steps, each process feeding half of every batch: the loss and gradient norm of every
  step, the parameters and the data position after them."""
  port = 20000 + os.getpid() % 20000
  env = dict(os.environ, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4"))
  overrides = {**SGD, "train.num_steps": 4, "train.checkpoint_every": 4}
  common = _flags(overrides)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "flamingo_jax.training.train", f"--config={TRAIN_CONFIG}:two",
       f"--workdir={tmp_path / 'two'}", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}", *common],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
  one = _train_cli(tmp_path / "one", *common, config="two")
  for p in (*procs, one):
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out
  config = train_small.config("two", **overrides)
  a, data_a = _final_checkpoint(tmp_path / "two", 4, config)
  b, data_b = _final_checkpoint(tmp_path / "one", 4, config)
  # Same global batches; 2 x 4 devices vs 1 x 8 devices: identical programs up to reduction order.
  # A gradient off by a factor (a mean over one process's devices only) fails at rtol 1e-5.
  np.testing.assert_allclose(_logged(tmp_path / "two"), _logged(tmp_path / "one"), rtol=1e-5)
  assert len(_logged(tmp_path / "two")) == 4
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), a, b)
  assert data_a == data_b
