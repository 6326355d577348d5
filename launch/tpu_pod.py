r"""Train on a Cloud TPU VM pod slice: create (or reuse) it, put the code on every worker, start the
trainer on all workers at once, stream the logs; stop and delete it later.

  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a \
      --accelerator v5p-32 [--reuse] [--git https://github.com/me/flamingo_jax.git] [--dry-run] \
      -- --config experiments/flamingo.py:flamingo_3b --workdir gs://my-bucket/runs/3b
  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a --action stop
  python -m launch.tpu_pod --name flamingo --project my-project --zone us-east5-a --action delete

`--action launch` (default), in order: create a queued resource (`--reuse`: skip it), wait until it is
ACTIVE, copy this checkout to every worker (tar + scp; `--git URL`: clone it there instead) and
pip-install it with the `data` and `tpu` extras, start `python3 -m flamingo_jax.train <args>
--distributed=auto` on all workers (`--worker=all`; on a TPU VM `jax.distributed` finds the
coordinator, process count and index itself) in the background, then follow worker 0's log.
`--action stop` sends SIGTERM to the trainer on every worker (it saves a checkpoint and exits);
`--action delete` deletes the queued resource and its TPU VMs. The workdir must be storage every
worker sees (a gs:// bucket). `--dry-run` prints each command instead of running it.
"""

from __future__ import annotations

import argparse
import sys

from launch.commands import execute, shell, train_command

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
    plan.append(_ssh(args, "all", f"rm -rf {REMOTE_DIR} && git clone --depth=1 "
                                  f"{shell([args.git])} {REMOTE_DIR} && cd {REMOTE_DIR} && {INSTALL}"))
  else:
    plan += [["tar", "czf", ARCHIVE, "--exclude=.git", "--exclude=.venv", "--exclude=workdirs", "."],
             ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}",
              *_where(args), "--worker=all"],
             _ssh(args, "all", f"mkdir -p {REMOTE_DIR} && tar xzf {ARCHIVE} -C {REMOTE_DIR} && "
                               f"cd {REMOTE_DIR} && {INSTALL}")]
  trainer = shell(train_command(args.train_args, distributed="auto"))
  plan.append(_ssh(args, "all", f"cd {REMOTE_DIR} && nohup {trainer} > {LOG} 2>&1 < /dev/null &"))
  plan.append(_ssh(args, "0", f"tail -F {LOG}"))
  return plan


def stop_plan(args) -> list[list[str]]:
  # [f]lamingo: the pattern does not match the remote shell running pkill itself.
  return [_ssh(args, "all", 'pkill -TERM -f "python3 -m [f]lamingo_jax.train" || true')]


def delete_plan(args) -> list[list[str]]:
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args),
           "--force", "--quiet"]]


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m launch.tpu_pod", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True, help="Queued resource and TPU VM name.")
  parser.add_argument("--project", required=True)
  parser.add_argument("--zone", required=True)
  parser.add_argument("--action", choices=("launch", "stop", "delete"), default="launch")
  parser.add_argument("--accelerator", help="Slice type, e.g. v5p-32 (launch).")
  parser.add_argument("--runtime", help="TPU VM software version (default: per generation).")
  parser.add_argument("--spot", action="store_true", help="Spot capacity.")
  parser.add_argument("--reuse", action="store_true", help="The slice exists: skip creating it.")
  parser.add_argument("--git", help="Clone this repository on the workers instead of copying.")
  parser.add_argument("--dry-run", action="store_true", help="Print the commands; run nothing.")
  parser.add_argument("train_args", nargs="*", help="After --: the trainer's flags.")
  args = parser.parse_args(argv)
  if args.action == "launch" and not (args.accelerator or args.reuse):
    parser.error("--action launch needs --accelerator (or --reuse for an existing slice).")
  if args.action == "launch" and not args.train_args:
    parser.error("give the trainer's flags after --, e.g. -- --config ... --workdir gs://...")
  return args


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  plan = {"launch": launch_plan, "stop": stop_plan, "delete": delete_plan}[args.action](args)
  return execute(plan, args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
