r"""The quickstart: the paper's three stages end to end, then held-out results.

  python -m flamingo_jax.tools.quickstart --config experiments/flamingo.py:tiny,data=demo \
      --workdir workdirs/quickstart

1. contrastive: pretrain the vision tower on the image-text pairs      -> <workdir>/vision
2. lm:          pretrain the text-only LM on the corpus text            -> <workdir>/lm
3. flamingo:    freeze both, train resampler + gated blocks on the mix  -> <workdir>/flamingo
Then, on held-out batches of every dataset: the Flamingo loss next to the frozen LM's text-only loss
on the same tokens, tanh(alpha) of every gated block, and <workdir>/flamingo/training.png; and the
few-shot evaluation of the trained model on the held-out digits (experiments/evaluation.py:demo) at
0, 1, 2, 4 and 8 shots: captioning CIDEr, digit naming by likelihood, and the in-context renaming of
the colours with held-out nonsense names, each with its 95% interval -> <workdir>/fewshot/, and the
shots curve next to the gate plot, <workdir>/flamingo/shots.png.
Each stage is `flamingo_jax.training.train` with `config.task` set; a stage whose export exists is
skipped, so the command resumes where it stopped.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import demo
from data_pipelines import mixture as mixture_lib
from data_pipelines.tokenizer import Tokenizer
from experiments import evaluation
from flamingo_jax.config import Config, EvaluationConfig
from flamingo_jax.evaluation.evaluate import evaluate, results_table
from flamingo_jax.evaluation.heldout import mean_losses
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.tools.plot import plot_shots, plot_training
from flamingo_jax.training import train as trainer
from flamingo_jax.training.losses import next_token_loss
from flamingo_jax.training.metrics import read_metrics
from flamingo_jax.training.tasks import lm_task
from flamingo_jax.weights.pretrained import load_trained
from flamingo_jax.weights.store import load_params

STAGES = (("contrastive", "vision"), ("lm", "lm"), ("flamingo", None))  # (task, its export).


def stage_dir(workdir: str, task: str) -> str:
  return os.path.join(workdir, "vision" if task == "contrastive" else task)


def stage_config(config: Config, task: str, workdir: str) -> Config:
  """The base config specialised to one stage (its task, steps and datasets)."""
  overrides = {"task": task, "train.num_steps": getattr(config.quickstart, f"{task}_steps")}
  if task == "contrastive":  # Image-text pairs only, one loss.
    name = config.quickstart.contrastive_dataset
    if name not in config.data.datasets:
      raise ValueError(f"Invalid config: quickstart.contrastive_dataset={name!r}: must name one of "
                       f"data.datasets ({', '.join(config.data.datasets)}).")
    overrides["data.datasets"] = {name: {**config.data.datasets[name].to_dict(), "loss_weight": 1.0,
                                         "batch_size": config.quickstart.contrastive_batch_size}}
    overrides["data.exclude"] = ""
  if task == "lm":
    overrides["optimizer.learning_rate"] = config.quickstart.lm_learning_rate
    overrides["data.exclude"] = ",".join(filter(None, (config.data.exclude,
                                                       config.quickstart.lm_exclude)))
    for name, size in config.quickstart.lm_batch_sizes.items():
      if name not in config.data.datasets:
        raise ValueError(f"Invalid config: quickstart.lm_batch_sizes names {name!r}, which is not "
                         f"one of data.datasets ({', '.join(config.data.datasets)}).")
      overrides[f"data.datasets.{name}.batch_size"] = size
  if task == "flamingo":
    overrides["init.vision_checkpoint"] = os.path.join(stage_dir(workdir, "contrastive"), "export",
                                                       "vision")
    overrides["init.lm_checkpoint"] = os.path.join(stage_dir(workdir, "lm"), "export", "lm")
  return config.replace(overrides)


def heldout_losses(flamingo_config: Config, params) -> dict[str, tuple[float, float]]:
  """{dataset: (Flamingo loss, text-only LM loss)} of the trained run (its config and params) on
  held-out batches, the same tokens for both."""
  text_lm = lm_task(flamingo_config.model)
  lm_abstract = jax.eval_shape(lambda: nn.meta.unbox(
      text_lm.model.init(jax.random.key(0), *text_lm.init_inputs)["params"]))
  lm_params = load_params(flamingo_config.init.lm_checkpoint, lm_abstract)

  mixture = mixture_lib.from_config(flamingo_config, split="eval")
  flamingo = jax.jit(Flamingo(flamingo_config.model).apply)
  text_only_lm = jax.jit(text_lm.model.apply)

  def losses(batch):
    ours = flamingo({"params": params}, batch["tokens"], batch["images"], batch["phi"])
    text_only = text_only_lm({"params": lm_params}, batch["tokens"])
    return (float(next_token_loss(ours, batch["labels"], batch["loss_mask"])),
            float(next_token_loss(text_only, batch["labels"], batch["loss_mask"])))

  return {name: tuple(means) for name, means in
          mean_losses(mixture, flamingo_config.quickstart.heldout_batches, losses).items()}


def run_stages(config: Config, workdir: str) -> None:
  """The three stages in turn; a stage whose export exists is skipped (the command resumes), and a
  stage stopped before its last step (SIGTERM) stops the command."""
  stages = [stage_config(config, task, workdir) for task, _ in STAGES]  # All checked first.
  for (task, export), stage in zip(STAGES, stages):
    directory = stage_dir(workdir, task)
    if export and os.path.exists(os.path.join(directory, "export", export)):
      print(f"== {task}: done earlier ({directory})")
      continue
    print(f"== stage {task} -> {directory}", flush=True)
    step = int(trainer.train(stage, directory).step)
    if step < stage.train.num_steps:  # Stopped by SIGTERM: the next stage needs this one's export.
      raise SystemExit(f"== {task} stopped at step {step} of {stage.train.num_steps} (SIGTERM); "
                       "run the same command again to resume it.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, workdir = Config.from_cli(flags.FLAGS.config), flags.FLAGS.workdir
  paths = [config.data.tokenizer] + [spec.path for spec in config.data.datasets.values()]
  root = os.path.dirname(config.data.tokenizer)
  if config.data.source == "arrayrecord" and not any(map(os.path.exists, paths)):
    print(f"== building the demo corpus in {root}", flush=True)
    demo.build(root)
  try:
    if config.data.source == "arrayrecord":
      demo.check_version(root)
    run_stages(config, workdir)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None

  flamingo_dir = stage_dir(workdir, "flamingo")
  run_config, params = load_trained(flamingo_dir)  # Once, for both comparisons.
  print("\n== held-out results (mean next-token loss on the same tokens)")
  print(f"{'dataset':<14}{'Flamingo':>10}{'text-only LM':>14}")
  for name, (ours, text_only) in heldout_losses(run_config, params).items():
    print(f"{name:<14}{ours:>10.3f}{text_only:>14.3f}")
  last = read_metrics(flamingo_dir)[-1]
  for gate in ("attn", "ffw"):
    values = ", ".join(f"{v:+.3f}" for v in last.get(f"gates/{gate}", []))
    print(f"tanh(alpha) {gate} gates by block: [{values}]")
  print(f"plot: {plot_training(flamingo_dir, os.path.join(flamingo_dir, 'training.png'))}")
  fewshot_demo(run_config, params, workdir)


def fewshot_demo(run_config: Config, params, workdir: str) -> dict:
  """Few-shot evaluation of the trained model on the demo corpus's held-out digits (the `demo`
  preset of experiments/evaluation.py); prints the table and writes <workdir>/fewshot/results.*."""
  corpus = os.path.dirname(run_config.data.tokenizer)
  settings = EvaluationConfig.from_dict(evaluation.get_config("demo"))
  settings = settings.replace({f"tasks.{name}.data_dir": corpus for name in settings.tasks})
  print("\n== few-shot evaluation on held-out digits (flamingo_jax.evaluation.evaluate, "
        "experiments/evaluation.py:demo)", flush=True)
  results = evaluate(settings, run_config.model, params, Tokenizer.of_run(run_config),
                     os.path.join(workdir, "fewshot"))
  print(results_table(results))
  print(f"shots curve: {plot_shots(results, os.path.join(workdir, 'flamingo', 'shots.png'))}")
  return results


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("workdir", None, "Where the three stages write.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
