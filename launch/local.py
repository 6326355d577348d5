r"""Train on this host alone (CPU or its GPUs): one process, no jax.distributed.

  python -m launch.local [--platform cpu|gpu] [--dry-run] \
      -- --config experiments/flamingo.py:tiny --workdir workdirs/run

Runs `JAX_PLATFORMS=<platform> <this python> -m flamingo_jax.training.train <args>
--distributed=off` (`--platform auto`: JAX picks the accelerator if there is one). `--dry-run`
prints the command.
"""

from __future__ import annotations

import sys
import types

from absl import app, flags

from launch.commands import (execute, flag_args, parse_flags, plan_of, require_train_args,
                             train_command)

PROG = "python -m launch.local"
PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "auto": ""}


def local_plan(args) -> list[list[str]]:
  trainer = train_command(args.train_args, python=args.python, distributed="off")
  platform = PLATFORMS[args.platform]
  return [["env", f"JAX_PLATFORMS={platform}", *trainer] if platform else trainer]


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[flags.FlagHolder]:
  return [
      flags.DEFINE_enum("platform", "auto", list(PLATFORMS),
                        "The trainer's JAX platform (auto: JAX picks).", flag_values=flag_values),
      flags.DEFINE_string("python", sys.executable, "Python with flamingo_jax installed.",
                          flag_values=flag_values),
      flags.DEFINE_bool("dry-run", False, "Print the command; run nothing.",
                        flag_values=flag_values),
  ]


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """The arguments of `argv` (no program name), parsed in this process (see `parse_flags`)."""
  return require_train_args(parse_flags(define_flags, PROG, argv))


def run(args: types.SimpleNamespace) -> int:
  return execute(plan_of(local_plan, args), args.dry_run)


def main(argv: list[str]) -> int:
  return run(parse_args(argv))


if __name__ == "__main__":
  holders = define_flags()
  app.run(lambda argv: run(require_train_args(flag_args(holders, argv[1:]))))
