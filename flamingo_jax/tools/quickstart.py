r"""The quickstart: the paper's three stages end to end, then held-out results.

  python -m flamingo_jax.quickstart --config experiments/flamingo.py:tiny --workdir workdirs/quickstart

1. contrastive: pretrain the vision tower on the image-text pairs      -> <workdir>/vision
2. lm:          pretrain the text-only LM on the corpus text            -> <workdir>/lm
3. flamingo:    freeze both, train resampler + gated blocks on the mix  -> <workdir>/flamingo
Then, on held-out batches of every dataset: the Flamingo loss next to the frozen LM's text-only loss
on the same tokens, tanh(alpha) of every gated block, and <workdir>/flamingo/training.png; and the
few-shot evaluation of the trained model on the held-out digits (experiments/evaluation.py:demo):
captioning CIDEr and the in-context colour-renaming task at 0 and 4 shots -> <workdir>/fewshot/.
Each stage is `flamingo_jax.train` with `config.task` set; a stage whose export exists is skipped, so
the command resumes where it stopped.
"""

from __future__ import annotations

import copy
import os

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import demo
from data_pipelines.tokenizer import Tokenizer
from experiments import evaluation
from flamingo_jax import train as trainer
from flamingo_jax.checkpointing import load_params
from flamingo_jax.evaluate import evaluate, results_table
from flamingo_jax.generate import load_trained
from flamingo_jax.heldout import mean_losses
from flamingo_jax.losses import next_token_loss
from flamingo_jax.metrics import read_metrics
from flamingo_jax.model import Flamingo
from flamingo_jax.plot import plot_training
from flamingo_jax.tasks import make_task


def stage_config(config: ml_collections.ConfigDict, task: str, workdir: str):
  """The base config specialised to one stage (its task, steps and datasets)."""
  stage = copy.deepcopy(config)
  stage.task = task
  stage.train.num_steps = config.quickstart[f"{task}_steps"]
  if task == "contrastive":  # Image-text pairs only, one loss.
    pairs = {name: spec for name, spec in config.data.datasets.items()
             if name == config.quickstart.contrastive_dataset}
    stage.data.datasets = {name: {**spec.to_dict(), "loss_weight": 1.0} for name, spec in pairs.items()}
  if task == "flamingo":
    stage.init.vision_checkpoint = os.path.join(workdir, "vision", "export", "vision")
    stage.init.lm_checkpoint = os.path.join(workdir, "lm", "export", "lm")
  return stage


def heldout_losses(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[float, float]]:
  """{dataset: (Flamingo loss, text-only LM loss)} on held-out batches, the same tokens for both."""
  flamingo_config = stage_config(config, "flamingo", workdir)
  model_config, params = load_trained(flamingo_config, os.path.join(workdir, "flamingo"))
  lm_task = make_task("lm", model_config)
  lm_abstract = jax.eval_shape(lambda: nn.meta.unbox(
      lm_task.model.init(jax.random.key(0), *lm_task.init_inputs)["params"]))
  lm_params = load_params(flamingo_config.init.lm_checkpoint, lm_abstract)

  mixture = trainer.build_mixture(flamingo_config, model_config, split="eval")
  flamingo = jax.jit(Flamingo(model_config).apply)
  text_lm = jax.jit(lm_task.model.apply)

  def losses(batch):
    ours = flamingo({"params": params}, batch["tokens"], batch["images"], batch["phi"])
    text_only = text_lm({"params": lm_params}, batch["tokens"])
    return (float(next_token_loss(ours, batch["labels"], batch["loss_mask"])),
            float(next_token_loss(text_only, batch["labels"], batch["loss_mask"])))

  return {name: tuple(means) for name, means in
          mean_losses(mixture, config.quickstart.heldout_batches, losses).items()}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config.data.source == "arrayrecord" and not os.path.exists(config.data.tokenizer):
    root = os.path.dirname(config.data.tokenizer)
    print(f"== building the demo corpus in {root}", flush=True)
    demo.build(root)
  for task, export in (("contrastive", "vision"), ("lm", "lm"), ("flamingo", None)):
    stage_dir = os.path.join(workdir, "vision" if task == "contrastive" else task)
    if export and os.path.exists(os.path.join(stage_dir, "export", export)):
      print(f"== {task}: done earlier ({stage_dir})")
      continue
    print(f"== stage {task} -> {stage_dir}", flush=True)
    trainer.train(stage_config(config, task, workdir), stage_dir)

  print("\n== held-out results (mean next-token loss on the same tokens)")
  print(f"{'dataset':<14}{'Flamingo':>10}{'text-only LM':>14}")
  for name, (ours, text_only) in heldout_losses(config, workdir).items():
    print(f"{name:<14}{ours:>10.3f}{text_only:>14.3f}")
  last = read_metrics(os.path.join(workdir, "flamingo"))[-1]
  for gate in ("attn", "ffw"):
    values = ", ".join(f"{v:+.3f}" for v in last.get(f"gates/{gate}", []))
    print(f"tanh(alpha) {gate} gates by block: [{values}]")
  print(f"plot: {plot_training(os.path.join(workdir, 'flamingo'), os.path.join(workdir, 'flamingo', 'training.png'))}")
  fewshot_demo(config, workdir)


def fewshot_demo(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Few-shot evaluation of the trained model on the demo corpus's held-out digits (the `demo`
  preset of experiments/evaluation.py); prints the table and writes <workdir>/fewshot/results.*."""
  settings = evaluation.get_config("demo")
  settings.flamingo = stage_config(config, "flamingo", workdir)
  corpus = os.path.dirname(config.data.tokenizer)
  for task in settings.tasks.values():
    task.data_dir = corpus
  print("\n== few-shot evaluation on held-out digits (flamingo_jax.evaluate, "
        "experiments/evaluation.py:demo)", flush=True)
  model_config, params = load_trained(settings.flamingo, os.path.join(workdir, "flamingo"))
  results = evaluate(settings, model_config, params, Tokenizer(config.data.tokenizer),
                     os.path.join(workdir, "fewshot"))
  print(results_table(results))
  return results


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_string("workdir", None, "Where the three stages write.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
