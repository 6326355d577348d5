"""What every launcher shares: its absl flags, the trainer command line, and running (or printing) a
plan of commands.

A launcher builds a plan: a list of argv lists, run one after another. With `--dry-run` each is
printed as one shell-quoted line (`shlex.join`) instead of run, so the printed text is exactly what
would be executed.

A launcher's `define_flags(flag_values)` defines its flags and returns their holders: on
`flags.FLAGS` under `app.run`, or on a fresh `flags.FlagValues` per call of its `parse_args(argv)`
(`parse_flags`), so tests parse any number of argv lists in one process. absl stops at `--` and
leaves what follows (the trainer's flags) in argv.
"""

from __future__ import annotations

import shlex
import subprocess
import types
from typing import Any, Callable, Sequence

from absl import app, flags

TRAIN_MODULE = "flamingo_jax.training.train"


def train_command(train_args: Sequence[str], python: str = "python3",
                  distributed: str = "auto") -> list[str]:
  """argv of the trainer: `<python> -m flamingo_jax.training.train <train_args>
  --distributed=<mode>` (`train_args`: --config, --workdir and any --config.* overrides)."""
  if any(a.startswith("--distributed") for a in train_args):
    raise ValueError("The launcher sets --distributed itself; drop it from the trainer arguments.")
  return [python, "-m", TRAIN_MODULE, *train_args, f"--distributed={distributed}"]


def plan_of(plan: Callable[[Any], Any], args: types.SimpleNamespace) -> Any:
  """`plan(args)`, its ValueError (a bad flag value) raised as `app.UsageError`: one line under
  `app.run`, no traceback."""
  try:
    return plan(args)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


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


def flag_args(holders: Sequence[flags.FlagHolder], train_args: Sequence[str]
              ) -> types.SimpleNamespace:
  """The launcher's flag values as attributes (`--dry-run` -> `dry_run`) and `train_args`: the
  arguments absl left (after `--`: the trainer's flags)."""
  values = {holder.name.replace("-", "_"): holder.value for holder in holders}
  return types.SimpleNamespace(**values, train_args=list(train_args))


def require_train_args(args: types.SimpleNamespace) -> types.SimpleNamespace:
  """`args`, or an `app.UsageError` when no trainer flags follow `--`."""
  if not args.train_args:
    raise app.UsageError("give the trainer's flags after --, e.g. -- --config ... --workdir ...")
  return args


def parse_flags(define_flags: Callable[[flags.FlagValues], Sequence[flags.FlagHolder]], prog: str,
                argv: Sequence[str]) -> types.SimpleNamespace:
  """`flag_args` of `argv` (no program name) parsed into a fresh FlagValues: callable any number of
  times in one process (tests), `flags.FLAGS` untouched. A bad flag raises `flags.Error`."""
  flag_values = flags.FlagValues()
  holders = define_flags(flag_values)
  return flag_args(holders, flag_values([prog, *argv])[1:])
