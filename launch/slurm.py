r"""Train on a multi-node GPU cluster with SLURM: write an sbatch script and submit it.

  python -m launch.slurm --name flamingo --nodes 2 --gpus-per-node 8 --code-dir /shared/flamingo_jax \
      [--partition gpu] [--time 24:00:00] [--python /shared/venv/bin/python] [--dry-run] \
      -- --config experiments/flamingo.py:flamingo_9b --workdir /shared/runs/9b

The script runs one task per node (each process drives all GPUs of its node) and sets the
`jax.distributed` environment the trainer reads (`flamingo_jax.train.initialize_processes`):
JAX_COORDINATOR_ADDRESS = the job's first node and `--port`, JAX_NUM_PROCESSES = the task count,
JAX_PROCESS_ID = each task's SLURM_PROCID. `--dry-run` prints the script (as the `cat` that writes
it) and the `sbatch` command instead of running them.
"""

from __future__ import annotations

import argparse
import os
import sys

from launch.commands import execute, shell, train_command


def sbatch_script(args) -> str:
  """The batch script: resources, the jax.distributed environment, one trainer task per node."""
  directives = [f"--job-name={args.name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
                f"--gpus-per-node={args.gpus_per_node}", f"--time={args.time}",
                f"--chdir={args.code_dir}", f"--output={args.name}-%j.out"]
  if args.partition:
    directives.append(f"--partition={args.partition}")
  trainer = shell(train_command(args.train_args, python=args.python, distributed="env"))
  return "\n".join([
      "#!/bin/bash",
      *(f"#SBATCH {d}" for d in directives),
      "set -euo pipefail",
      "# Process 0 (the first node) coordinates; one process per node.",
      f'export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
      f':{args.port}"',
      'export JAX_NUM_PROCESSES="$SLURM_NTASKS"',
      "srun --kill-on-bad-exit=1 bash -c 'JAX_PROCESS_ID=$SLURM_PROCID exec \"$0\" \"$@\"' "
      f"{trainer}",
  ]) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", default="flamingo", help="Job name (and log file prefix).")
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus-per-node", type=int, default=8)
  parser.add_argument("--partition", help="SLURM partition (default: the cluster's).")
  parser.add_argument("--time", default="24:00:00", help="Wall-clock limit.")
  parser.add_argument("--port", type=int, default=12345, help="Coordinator port on the first node.")
  parser.add_argument("--code-dir", default=os.getcwd(),
                      help="This repository on storage every node sees (the job's working dir).")
  parser.add_argument("--python", default="python3", help="Python with flamingo_jax installed.")
  parser.add_argument("--script", help="Where to write the script (default: <name>.sbatch).")
  parser.add_argument("--dry-run", action="store_true", help="Print the commands; run nothing.")
  parser.add_argument("train_args", nargs="+", help="After --: the trainer's flags.")
  args = parser.parse_args(argv)
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error("--nodes and --gpus-per-node must be at least 1.")
  args.script = args.script or f"{args.name}.sbatch"
  return args


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  script = sbatch_script(args)
  if args.dry_run:
    print(f"cat > {shell([args.script])} <<'EOF'\n{script}EOF", flush=True)
  else:
    with open(args.script, "w", encoding="utf-8") as f:
      f.write(script)
  return execute([["sbatch", args.script]], args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
