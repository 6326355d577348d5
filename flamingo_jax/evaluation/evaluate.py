r"""Few-shot evaluation: every task of a config at every shot count -> results JSON + Markdown table.

  python -m flamingo_jax.evaluation.evaluate --config experiments/evaluation.py:<preset> \
      --checkpoint <flamingo training workdir> --workdir <out>

The model, its frozen towers and its tokenizer come from the run's own record (`--checkpoint`,
`weights.pretrained.load_trained`). For each task (flamingo_jax/config/evaluation.py documents the
fields): load the support and query examples (data_pipelines/eval_sets.py), pick shots (random,
seeded; or RICES with features cached under <workdir>/rices), build the prompts (fewshot.py), then
run the task (runner.py): captioning / vqa generate with beam search and score CIDEr-D or VQA
accuracy; classification / mapping score every class's name, averaged over shot orders.
Writes <workdir>/results.json (scores and 95% intervals per task and shot count, with the settings)
and <workdir>/results.md (tasks as columns, shots as rows, as the paper's Table 1).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from data_pipelines.tokenizer import Tokenizer
from flamingo_jax.config import EvaluationConfig, FlamingoConfig
from flamingo_jax.evaluation.runner import METRIC_NAMES, ModelCalls, TaskRunner
from flamingo_jax.weights.pretrained import load_trained


def evaluate(settings: EvaluationConfig, model_config: FlamingoConfig, params,
             tokenizer: Tokenizer, workdir: str, log: Callable[[str], None] = print,
             calls: ModelCalls = ModelCalls()) -> dict:
  """Runs every task of `settings.tasks` at every `settings.shots` (the model reached through
  `calls`: runner.ModelCalls); writes results.json and results.md into `workdir` and returns the
  results dict."""
  if tokenizer.vocab_size != model_config.lm.vocab_size:
    raise ValueError(f"The tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                     f"model.lm.vocab_size={model_config.lm.vocab_size}: it is not the model's.")
  os.makedirs(workdir, exist_ok=True)
  results = {"tasks": {}, "settings": settings.to_dict()}
  for name, task in settings.tasks.items():
    start = time.perf_counter()
    runner = TaskRunner(name, task, settings, model_config, params, tokenizer,
                        os.path.join(workdir, "rices"), log, calls)
    scores, intervals = {}, {}
    for k in settings.shots:
      score = runner.run(k)
      scores[str(k)], intervals[str(k)] = score.value, [score.low, score.high]
      log(f"{name}: {k}-shot {METRIC_NAMES[runner.metric]} = {score.value:.2f} "
          f"(95% interval {score.low:.2f}-{score.high:.2f})")
    results["tasks"][name] = dict(
        metric=runner.metric, scores=scores, intervals=intervals, num_queries=len(runner.queries),
        num_support=len(runner.support), selection=task.selection, chance=runner.chance(),
        seconds=round(time.perf_counter() - start, 1))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(results_table(results))
  return results


def results_table(results: dict) -> str:
  """Markdown: tasks as columns, shot counts as rows (the paper's Table 1 layout), then settings."""
  tasks = results["tasks"]
  shots = sorted({int(k) for t in tasks.values() for k in t["scores"]})
  header = "| shots | " + " | ".join(
      f"{name} ({METRIC_NAMES[t['metric']]})" for name, t in tasks.items()) + " |"
  lines = [header, "|---" * (len(tasks) + 1) + "|"]
  for k in shots:
    cells = [f"{t['scores'][str(k)]:.1f} ({t['intervals'][str(k)][0]:.1f}-"
             f"{t['intervals'][str(k)][1]:.1f})" if str(k) in t["scores"] else ""
             for t in tasks.values()]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  chance = [f"{name}: chance {t['chance']:.1f}" for name, t in tasks.items() if t.get("chance")]
  s = results["settings"]
  notes = ["queries / support: " + ", ".join(
      f"{name} {t['num_queries']} / {t['num_support']} ({t['selection']})" for name, t in tasks.items()),
      f"decoding: {s['sampling']['strategy']} (beams {s['sampling']['num_beams']}, max "
      f"{s['sampling']['max_new_tokens']} new tokens); 0 shots = {s['num_text_only_shots']} "
      f"text-only examples; seed {s['seed']}",
      "in brackets: 95% interval from the number of queries (Wilson for top-1; mean +- 1.96 "
      "standard errors for CIDEr and VQA accuracy; Hanley-McNeil for ROC-AUC)"] + chance
  return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  settings = EvaluationConfig.from_cli(f.config)
  try:
    config, params = load_trained(f.checkpoint)
    results = evaluate(settings, config.model, params, Tokenizer.of_run(config), f.workdir)
  except ValueError as e:  # A run, a tower, a tokenizer or a task's data that does not fit.
    raise SystemExit(f"error: {e}") from None
  print(results_table(results))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/evaluation.py:<preset>")
  flags.DEFINE_string("checkpoint", None, "Workdir of a flamingo_jax.training.train run (task=flamingo).")
  flags.DEFINE_string("workdir", None, "Where results.json, results.md and the RICES cache go.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)
