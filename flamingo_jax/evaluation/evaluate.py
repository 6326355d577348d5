r"""Few-shot evaluation: every task of a config at every shot count -> results JSON + Markdown table.

  python -m flamingo_jax.evaluation.evaluate --config experiments/evaluation.py:<preset> \
      --checkpoint <flamingo training workdir> --workdir <out>

The model, its frozen towers and its tokenizer come from the run's own record (`--checkpoint`,
`weights.pretrained.load_trained`). For each task (flamingo_jax/config/evaluation.py documents the
fields): load the support and query examples (data_pipelines/eval_sets.py), pick shots (random,
seeded; or RICES with features cached under <workdir>/rices), build the prompts (fewshot.py), then
run the task (runner.py): captioning / vqa generate with beam search and score CIDEr-D or VQA
accuracy; classification / mapping score every class's name, averaged over shot orders.
Writes <workdir>/results.json (scores and 95% intervals per task and shot count, with the settings),
<workdir>/results.md (tasks as columns, shots as rows, as the paper's Table 1) and
<workdir>/predictions.json (per task and shot count, each query's generated text or class scores).

Each process builds a mesh of its own devices (--mesh=data,fsdp,tensor; default 1,-1,1: all of them
on fsdp) and loads the params onto it. Several processes (--coordinator_address,
--num_processes, --process_id as for training) are data-parallel replicas: each runs its share of
every task's queries and RICES features, the predictions are gathered, and process 0 writes the
outputs (hosts.py). On the same per-process mesh the results equal a one-process run's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
from absl import app, flags
from ml_collections import config_flags

from data_pipelines.tokenizer import Tokenizer
from flamingo_jax import sharding
from flamingo_jax.config import EvaluationConfig, FlamingoConfig
from flamingo_jax.evaluation.runner import METRIC_NAMES, ModelCalls, TaskRunner
from flamingo_jax.weights.pretrained import load_trained


def evaluate(settings: EvaluationConfig, model_config: FlamingoConfig, params,
             tokenizer: Tokenizer, workdir: str, log: Callable[[str], None] = print,
             calls: ModelCalls = ModelCalls()) -> dict:
  """Runs every task of `settings.tasks` at every `settings.shots` (the model reached through
  `calls`: runner.ModelCalls); writes results.json, results.md and predictions.json into `workdir`
  and returns the results dict. Every process of a multi-process run calls it and gets the results;
  process 0 alone logs and writes."""
  if tokenizer.vocab_size != model_config.lm.vocab_size:
    raise ValueError(f"The tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                     f"model.lm.vocab_size={model_config.lm.vocab_size}: it is not the model's.")
  first = jax.process_index() == 0
  log = log if first else (lambda _: None)
  results, predictions = {"tasks": {}, "settings": settings.to_dict()}, {}
  for name, task in settings.tasks.items():
    start = time.perf_counter()
    runner = TaskRunner(name, task, settings, model_config, params, tokenizer,
                        os.path.join(workdir, "rices"), log, calls)
    scores, intervals, predictions[name] = {}, {}, {}
    for k in settings.shots:
      score = runner.run(k)
      scores[str(k)], intervals[str(k)] = score.value, [score.low, score.high]
      predictions[name][str(k)] = list(score.predictions)
      log(f"{name}: {k}-shot {METRIC_NAMES[runner.metric]} = {score.value:.2f} "
          f"(95% interval {score.low:.2f}-{score.high:.2f})")
    results["tasks"][name] = dict(
        metric=runner.metric, scores=scores, intervals=intervals, num_queries=len(runner.queries),
        num_support=len(runner.support), selection=task.selection, chance=runner.chance(),
        seconds=round(time.perf_counter() - start, 1))
  if first:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(results_table(results))
    with open(os.path.join(workdir, "predictions.json"), "w") as f:
      json.dump(predictions, f)
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
    # Process flags, mesh shape, a run, a tower, a tokenizer or a task's data that does not fit.
    sharding.initialize_processes(f.distributed, f.coordinator_address, f.num_processes,
                                  f.process_id)
    mesh = sharding.mesh_from_flag(f.mesh, devices=jax.local_devices())
    config, params = load_trained(f.checkpoint, mesh)
    results = evaluate(settings, config.model, params, Tokenizer.of_run(config), f.workdir,
                       calls=ModelCalls.on(mesh))
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if jax.process_index() == 0:
    print(results_table(results))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/evaluation.py:<preset>")
  flags.DEFINE_string("checkpoint", None, "Workdir of a flamingo_jax.training.train run (task=flamingo).")
  flags.DEFINE_string("workdir", None, "Where results.json, results.md, predictions.json and the RICES "
                      "cache go (written by process 0).")
  flags.DEFINE_string("mesh", "1,-1,1", "data,fsdp,tensor sizes of each process's mesh over its own "
                      "devices, as in training (-1: the rest of the devices).")
  sharding.define_process_flags()
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)
