r"""The quickstart as a new user runs it: wall time and what the model learned, on held-out data.

  python benchmarks/quickstart.py [--workdir DIR] [--stages binding]

Runs `make quickstart`'s command (`python -m flamingo_jax.tools.quickstart`, after the install) in a
subprocess, into a new workdir that also receives the corpus (`corpus=<workdir>/corpus`, built from
nothing), and times the whole process. Then reads the few-shot
results it wrote (<workdir>/fewshot/results.json, experiments/evaluation.py:demo) and prints:

  quickstart_minutes        the command's wall time (corpus build, three stages, evaluation)
  heldout_digit_accuracy    digit naming by likelihood of the ten names, held-out scans, 0 shots
  renaming_4shot_accuracy   colours renamed with held-out nonsense names, 4 shots (chance 25%)
  renaming_gain_0_to_4      renaming accuracy at 4 shots minus at 0 shots, with `beyond_intervals`:
                            whether the 4-shot interval's low end lies above the 0-shot high end
  cider_gain_0_to_4         captioning CIDEr at 4 shots minus at 0 shots

Each accuracy line carries its 95% interval and the number of queries. `--stages binding` runs the
quickstart with `experiments/flamingo.py:tiny,data=demo,stages=binding` (its LM and Flamingo stages on
the naming pages alone) and prints the same lines as benchmark `quickstart_binding`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import emitter  # noqa: E402

def run_quickstart(workdir: str, stages: str) -> float:
  """Seconds of one quickstart process writing into the empty `workdir` (corpus in <workdir>/corpus)."""
  if os.path.exists(workdir) and os.listdir(workdir):
    raise SystemExit(f"error: --workdir {workdir} is not empty; pass a new or empty directory.")
  config = (f"experiments/flamingo.py:tiny,data=demo,corpus={os.path.join(workdir, 'corpus')},"
            f"stages={stages}")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "flamingo_jax.tools.quickstart", "--config", config,
                  "--workdir", workdir], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                 stdout=sys.stderr)  # Its report goes to stderr: stdout holds the JSON lines.
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default=None,
                      help="A new or empty directory (default: a new one under workdirs/).")
  parser.add_argument("--stages", default="all", choices=("all", "binding"),
                      help="experiments/flamingo.py's `stages` argument.")
  args = parser.parse_args()
  os.makedirs("workdirs", exist_ok=True)
  workdir = args.workdir or tempfile.mkdtemp(prefix="benchmark_quickstart-", dir="workdirs")
  emit = emitter("quickstart" if args.stages == "all" else f"quickstart_{args.stages}")
  seconds = run_quickstart(workdir, args.stages)
  emit("quickstart_minutes", seconds / 60, "minutes")
  with open(os.path.join(workdir, "fewshot", "results.json")) as f:
    tasks = json.load(f)["tasks"]

  def at(task: str, shots: int) -> tuple[float, list[float], int]:
    t = tasks[task]
    return t["scores"][str(shots)], t["intervals"][str(shots)], t["num_queries"]

  digits, interval, queries = at("digits", 0)
  emit("heldout_digit_accuracy", digits, "%", interval_95=interval, queries=queries, shots=0)
  four, four_interval, queries = at("renaming", 4)
  zero, zero_interval, _ = at("renaming", 0)
  emit("renaming_4shot_accuracy", four, "%", interval_95=four_interval, queries=queries,
       chance=tasks["renaming"]["chance"])
  emit("renaming_gain_0_to_4", four - zero, "points", beyond_intervals=four_interval[0] >
       zero_interval[1], interval_0=zero_interval, interval_4=four_interval)
  cider_four, cider_interval, _ = at("captions", 4)
  cider_zero, _, _ = at("captions", 0)
  emit("cider_gain_0_to_4", cider_four - cider_zero, "CIDEr points", cider_0=cider_zero,
       cider_4=cider_four, interval_4=cider_interval)


if __name__ == "__main__":
  main()
