r"""Train on a Cloud TPU VM pod slice: create (or reuse) it, put the code on every worker, start the
trainer on all workers at once, stream the logs; stop and delete it later.

  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a \
      --accelerator v5p-32 [--reuse] [--git https://github.com/me/flamingo_jax.git] [--dry-run] \
      -- --config experiments/flamingo.py:flamingo_3b --workdir gs://my-bucket/runs/3b
  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a --action stop
  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a --action delete

`--action launch` (default), in order: create a queued resource (`--reuse`: skip it), wait until it
is ACTIVE, copy this checkout to every worker (tar + scp; `--git URL`: clone it there instead) and
pip-install it with the `data` and `tpu` extras, start
`python3 -m flamingo_jax.training.train <args> --distributed=auto` on all workers (`--worker=all`;
on a TPU VM `jax.distributed` finds the coordinator, process count and index itself) in the
background, then follow worker 0's log.
`--action stop` sends SIGTERM to the trainer on every worker (it saves a checkpoint and exits);
`--action delete` deletes the queued resource and its TPU VMs. The workdir must be storage every
worker sees (a gs:// bucket). `--dry-run` prints each command instead of running it.
"""

from __future__ import annotations

import types

from absl import app, flags

from launch.commands import (TRAIN_MODULE, execute, flag_args, parse_flags, plan_of,
                             require_train_args, shell, train_command)

PROG = "python -m launch.tpu_pod"

# Cloud TPU VM software versions per generation (the accelerator name's prefix).
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "~/flamingo_jax"
ARCHIVE = "/tmp/flamingo_jax.tgz"
LOG = f"{REMOTE_DIR}/train.log"
INSTALL = 'python3 -m pip install -q -e ".[data,tpu]"'


def _where(args) -> list[str]:
  return [f"--project={args.project}", f"--zone={args.zone}"]


def _ssh(args, worker: str, command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args),
          f"--worker={worker}", "--command", command]


def _runtime(accelerator: str) -> str:
  prefix = accelerator.split("-")[0]
  if prefix not in RUNTIMES:
    raise ValueError(f"--accelerator={accelerator!r}: use one of {', '.join(RUNTIMES)} followed by "
                     "-<size>, e.g. v5p-32, or pass --runtime.")
  return RUNTIMES[prefix]


def _clone_or_update(url: str) -> str:
  """Shell: clone the repo into REMOTE_DIR, or fast-forward the clone already there. Nothing is
  deleted: a REMOTE_DIR that is not a clone, or a clone with local changes, stops the launch."""
  return (f"if [ -d {REMOTE_DIR}/.git ]; then git -C {REMOTE_DIR} fetch {url} HEAD && "
          f"git -C {REMOTE_DIR} merge --ff-only FETCH_HEAD; "
          f"elif [ -e {REMOTE_DIR} ]; then echo '{REMOTE_DIR} exists and is not a git clone; move it "
          f"away or launch without --git' >&2; exit 1; "
          f"else git clone --depth=1 {url} {REMOTE_DIR}; fi")


def launch_plan(args) -> list[list[str]]:
  """Create or reuse, wait, copy + install, start on all workers, follow worker 0's log."""
  plan = []
  if not args.reuse:
    plan.append(["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
                 f"--node-id={args.name}", *_where(args), f"--accelerator-type={args.accelerator}",
                 f"--runtime-version={args.runtime or _runtime(args.accelerator)}",
                 *(["--spot"] if args.spot else [])])
  describe = shell(["gcloud", "compute", "tpus", "queued-resources", "describe", args.name,
                    *_where(args)]) + ' --format="value(state.state)"'
  plan.append(["bash", "-c", f'until [ "$({describe})" = ACTIVE ]; do sleep 30; done'])
  if args.git:
    plan.append(_ssh(args, "all", f"{_clone_or_update(shell([args.git]))} && cd {REMOTE_DIR} && "
                                  f"{INSTALL}"))
  else:
    plan += [["tar", "czf", ARCHIVE, "--exclude=.git", "--exclude=.venv", "--exclude=workdirs",
              "."],
             ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}",
              *_where(args), "--worker=all"],
             _ssh(args, "all", f"mkdir -p {REMOTE_DIR} && tar xzf {ARCHIVE} -C {REMOTE_DIR} && "
                               f"cd {REMOTE_DIR} && {INSTALL}")]
  trainer = shell(train_command(args.train_args, distributed="auto"))
  plan.append(_ssh(args, "all", f"cd {REMOTE_DIR} && nohup {trainer} >> {LOG} 2>&1 < /dev/null &"))
  plan.append(_ssh(args, "0", f"tail -F {LOG}"))
  return plan


def stop_plan(args) -> list[list[str]]:
  # [f]lamingo: the pattern does not match the remote shell running pkill itself.
  pattern = f"python3 -m [{TRAIN_MODULE[0]}]{TRAIN_MODULE[1:]}"
  return [_ssh(args, "all", f'pkill -TERM -f "{pattern}" || true')]


def delete_plan(args) -> list[list[str]]:
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args),
           "--force", "--quiet"]]


PLANS = {"launch": launch_plan, "stop": stop_plan, "delete": delete_plan}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[flags.FlagHolder]:
  fv = flag_values
  return [
      flags.DEFINE_string("name", None, "Queued resource and TPU VM name.", required=True,
                          flag_values=fv),
      flags.DEFINE_string("project", None, "Google Cloud project.", required=True, flag_values=fv),
      flags.DEFINE_string("zone", None, "Zone of the slice, e.g. us-east5-a.", required=True,
                          flag_values=fv),
      flags.DEFINE_enum("action", "launch", ["launch", "stop", "delete"],
                        "Launch the run, stop it (SIGTERM) or delete the slice.", flag_values=fv),
      flags.DEFINE_string("accelerator", None, "Slice type, e.g. v5p-32 (launch).", flag_values=fv),
      flags.DEFINE_string("runtime", None, "TPU VM software version (default: per generation).",
                          flag_values=fv),
      flags.DEFINE_bool("spot", False, "Spot capacity.", flag_values=fv),
      flags.DEFINE_bool("reuse", False, "The slice exists: skip creating it.", flag_values=fv),
      flags.DEFINE_string("git", None, "Clone this repository on the workers instead of copying.",
                          flag_values=fv),
      flags.DEFINE_bool("dry-run", False, "Print the commands; run nothing.", flag_values=fv),
  ]


def checked(args: types.SimpleNamespace) -> types.SimpleNamespace:
  if args.action != "launch":
    return args
  if not (args.accelerator or args.reuse):
    raise app.UsageError("--action launch needs --accelerator (or --reuse for an existing slice).")
  return require_train_args(args)


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """The arguments of `argv` (no program name), parsed in this process (see `parse_flags`)."""
  return checked(parse_flags(define_flags, PROG, argv))


def run(args: types.SimpleNamespace) -> int:
  return execute(plan_of(PLANS[args.action], args), args.dry_run)


def main(argv: list[str]) -> int:
  return run(parse_args(argv))


if __name__ == "__main__":
  holders = define_flags()
  app.run(lambda argv: run(checked(flag_args(holders, argv[1:]))))
