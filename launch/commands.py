"""What every launcher shares: the trainer command line, and running (or printing) a plan of commands.

A launcher builds a plan: a list of argv lists, run one after another. With `--dry-run` each is
printed as one shell-quoted line (`shlex.join`) instead of run, so the printed text is exactly what
would be executed.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Sequence

TRAIN_MODULE = "flamingo_jax.train"


def train_command(train_args: Sequence[str], python: str = "python3",
                  distributed: str = "auto") -> list[str]:
  """argv of the trainer: `<python> -m flamingo_jax.train <train_args> --distributed=<mode>`
  (`train_args`: --config, --workdir and any --config.* overrides)."""
  if any(a.startswith("--distributed") for a in train_args):
    raise ValueError("The launcher sets --distributed itself; drop it from the trainer arguments.")
  return [python, "-m", TRAIN_MODULE, *train_args, f"--distributed={distributed}"]


def shell(argv: Sequence[str]) -> str:
  """One argv as a shell-quoted string (for `bash -c` or a remote `--command`)."""
  return shlex.join(argv)


def execute(plan: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Runs each command of `plan` in order (stopping at the first failure, whose status it returns),
  or prints them, one line each, when `dry_run`."""
  for argv in plan:
    if dry_run:
      print(shell(argv), flush=True)
      continue
    status = subprocess.call(list(argv))
    if status:
      return status
  return 0
