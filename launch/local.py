r"""Train on this host alone (CPU or its GPUs): one process, no jax.distributed.

  python -m launch.local [--platform cpu|gpu] [--dry-run] \
      -- --config experiments/flamingo.py:tiny --workdir workdirs/run

Runs `JAX_PLATFORMS=<platform> <this python> -m flamingo_jax.train <args> --distributed=off`
(`--platform auto`: JAX picks the accelerator if there is one). `--dry-run` prints the command.
"""

from __future__ import annotations

import argparse
import sys

from launch.commands import execute, train_command

PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "auto": ""}


def local_plan(args) -> list[list[str]]:
  trainer = train_command(args.train_args, python=args.python, distributed="off")
  platform = PLATFORMS[args.platform]
  return [["env", f"JAX_PLATFORMS={platform}", *trainer] if platform else trainer]


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--platform", choices=tuple(PLATFORMS), default="auto")
  parser.add_argument("--python", default=sys.executable, help="Python with flamingo_jax installed.")
  parser.add_argument("--dry-run", action="store_true", help="Print the command; run nothing.")
  parser.add_argument("train_args", nargs="+", help="After --: the trainer's flags.")
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  return execute(local_plan(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
