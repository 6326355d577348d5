r"""Train on a multi-node GPU cluster with SLURM: write an sbatch script and submit it.

  python -m launch.slurm --name flamingo --nodes 2 --gpus-per-node 8 \
      --code-dir /shared/flamingo_jax [--partition gpu] [--time 24:00:00] \
      [--python /shared/venv/bin/python] [--dry-run] \
      -- --config experiments/flamingo.py:flamingo_9b --workdir /shared/runs/9b

The script runs one task per node (each process drives all GPUs of its node) and sets the
`jax.distributed` environment the trainer reads
(`flamingo_jax.sharding.initialize_processes`): JAX_COORDINATOR_ADDRESS = the job's first
node and `--port`, JAX_NUM_PROCESSES = the task count, JAX_PROCESS_ID = each task's SLURM_PROCID.
`--dry-run` prints the script (as the `cat` that writes it) and the `sbatch` command instead of
running them.
"""

from __future__ import annotations

import os
import types

from absl import app, flags

from launch.commands import (execute, flag_args, parse_flags, plan_of, require_train_args, shell,
                             train_command)

PROG = "python -m launch.slurm"


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
      'export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | '
      f'head -n 1):{args.port}"',
      'export JAX_NUM_PROCESSES="$SLURM_NTASKS"',
      "srun --kill-on-bad-exit=1 bash -c 'JAX_PROCESS_ID=$SLURM_PROCID exec \"$0\" \"$@\"' "
      f"{trainer}",
  ]) + "\n"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[flags.FlagHolder]:
  fv = flag_values
  return [
      flags.DEFINE_string("name", "flamingo", "Job name (and log file prefix).", flag_values=fv),
      flags.DEFINE_integer("nodes", None, "Nodes (one trainer task each).", lower_bound=1,
                           required=True, flag_values=fv),
      flags.DEFINE_integer("gpus-per-node", 8, "GPUs of each node.", lower_bound=1, flag_values=fv),
      flags.DEFINE_string("partition", None, "SLURM partition (default: the cluster's).",
                          flag_values=fv),
      flags.DEFINE_string("time", "24:00:00", "Wall-clock limit.", flag_values=fv),
      flags.DEFINE_integer("port", 12345, "Coordinator port on the first node.", flag_values=fv),
      flags.DEFINE_string("code-dir", os.getcwd(), "This repository on storage every node sees "
                          "(the job's working dir).", flag_values=fv),
      flags.DEFINE_string("python", "python3", "Python with flamingo_jax installed.",
                          flag_values=fv),
      flags.DEFINE_string("script", None, "Where to write the script (default: <name>.sbatch).",
                          flag_values=fv),
      flags.DEFINE_bool("dry-run", False, "Print the commands; run nothing.", flag_values=fv),
  ]


def checked(args: types.SimpleNamespace) -> types.SimpleNamespace:
  args = require_train_args(args)
  args.script = args.script or f"{args.name}.sbatch"
  return args


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """The arguments of `argv` (no program name), parsed in this process (see `parse_flags`)."""
  return checked(parse_flags(define_flags, PROG, argv))


def run(args: types.SimpleNamespace) -> int:
  script = plan_of(sbatch_script, args)
  if args.dry_run:
    print(f"cat > {shell([args.script])} <<'EOF'\n{script}EOF", flush=True)
  else:
    with open(args.script, "w", encoding="utf-8") as f:
      f.write(script)
  return execute([["sbatch", args.script]], args.dry_run)


def main(argv: list[str]) -> int:
  return run(parse_args(argv))


if __name__ == "__main__":
  holders = define_flags()
  app.run(lambda argv: run(checked(flag_args(holders, argv[1:]))))
