"""Launchers: every dry-run example in launch/README.md prints exactly the documented commands."""

import importlib
import os
import re
import shlex
import subprocess

import pytest

from launch import local, slurm, tpu_pod

README = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "README.md")


def _documented_examples():
  """(argv, documented output) for every ```bash dry-run block followed by a ```text block."""
  text = open(README, encoding="utf-8").read()
  blocks = re.findall(r"```(bash|text)\n(.*?)```", text, re.S)
  examples = []
  for (kind, body), (next_kind, output) in zip(blocks, blocks[1:]):
    if kind == "bash" and next_kind == "text" and "--dry-run" in body:
      examples.append((shlex.split(body.replace("\\\n", " ")), output))
  return examples


EXAMPLES = _documented_examples()


def test_readme_documents_pod_launch_stop_delete_and_slurm():
  documented = [(argv[2], argv[argv.index("--action") + 1] if "--action" in argv else None)
                for argv, _ in EXAMPLES]
  assert documented == [("launch.tpu_pod", None), ("launch.tpu_pod", "stop"),
                        ("launch.tpu_pod", "delete"), ("launch.slurm", None)]


@pytest.mark.parametrize("argv, output", EXAMPLES, ids=lambda x: str(x)[:40])
def test_dry_run_prints_exactly_the_documented_commands(argv, output, capsys):
  assert argv[:2] == ["python", "-m"]
  module = importlib.import_module(argv[2])
  assert module.main(argv[3:]) == 0
  assert capsys.readouterr().out == output


def test_pod_launch_runs_the_trainer_on_all_four_workers_and_reads_worker_0():
  argv, output = EXAMPLES[0]
  assert "--accelerator" in argv and argv[argv.index("--accelerator") + 1] == "v5p-32"  # 4 hosts.
  lines = output.splitlines()
  start = [line for line in lines if "nohup" in line]
  assert len(start) == 1 and "--worker=all" in start[0]
  assert "python3 -m flamingo_jax.training.train --config experiments/flamingo.py:flamingo_9b" in start[0]
  assert start[0].rstrip("'").endswith("--distributed=auto >> ~/flamingo_jax/train.log 2>&1 "
                                       "< /dev/null &")
  assert "--worker=0" in lines[-1] and "tail -F" in lines[-1]
  assert lines[0].startswith("gcloud compute tpus queued-resources create flamingo")
  reused = tpu_pod.launch_plan(tpu_pod.parse_args(["--reuse", *argv[3:]]))
  assert not any("create" in cmd for cmd in reused)


def test_pod_launch_from_git_never_deletes_the_workers_directory(tmp_path):
  """The clone-or-update step, run by bash on a stand-in home: a directory that is not a clone
  stops the launch with its files intact; an existing clone is fast-forwarded."""
  argv, _ = EXAMPLES[0]
  plan = tpu_pod.launch_plan(tpu_pod.parse_args(["--git", str(tmp_path / "origin"), *argv[3:]]))
  (remote,) = [cmd[-1] for cmd in plan if "git clone" in cmd[-1]]
  step = remote.split(" && cd ")[0]
  git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
  origin = tmp_path / "origin"
  subprocess.run([*git, "init", "-q", str(origin)], check=True)
  (origin / "a.txt").write_text("one")
  subprocess.run([*git, "-C", str(origin), "add", "a.txt"], check=True)
  subprocess.run([*git, "-C", str(origin), "commit", "-qm", "1"], check=True)
  home = tmp_path / "home"
  (home / "flamingo_jax").mkdir(parents=True)
  (home / "flamingo_jax" / "notes.txt").write_text("mine")
  env = dict(os.environ, HOME=str(home))
  refused = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True)
  assert refused.returncode == 1 and "is not a git clone" in refused.stderr
  assert (home / "flamingo_jax" / "notes.txt").read_text() == "mine"
  (home / "flamingo_jax" / "notes.txt").unlink()
  (home / "flamingo_jax").rmdir()
  subprocess.run(["bash", "-c", step], env=env, check=True, capture_output=True)
  (origin / "a.txt").write_text("two")
  subprocess.run([*git, "-C", str(origin), "commit", "-qam", "2"], check=True)
  subprocess.run(["bash", "-c", step], env=env, check=True, capture_output=True)
  assert (home / "flamingo_jax" / "a.txt").read_text() == "two"


def test_slurm_script_sets_coordinator_count_and_index_for_each_task(tmp_path):
  argv, output = EXAMPLES[3]
  args = slurm.parse_args(argv[3:])
  script = slurm.sbatch_script(args)
  assert script in output and "#SBATCH --nodes=2" in script
  # Run the srun line's wrapper as SLURM would for task 1 of 2 on a job whose first node is node-a.
  wrapper = re.search(r"srun --kill-on-bad-exit=1 (bash -c '.*?') ", script).group(1)
  printer = "import os, sys; print(os.environ['JAX_PROCESS_ID'], sys.argv[1:])"
  env = {**os.environ, "SLURM_PROCID": "1"}
  out = subprocess.run(f"{wrapper} python3 -c {shlex.quote(printer)} --config 'a b'", shell=True,
                       env=env, capture_output=True, text=True, check=True).stdout
  assert out == "1 ['--config', 'a b']\n"
  assert 'head -n 1):12345"' in script and 'JAX_NUM_PROCESSES="$SLURM_NTASKS"' in script


def test_local_launch_and_the_distributed_flag_is_the_launchers():
  args = local.parse_args(["--platform", "cpu", "--python", "python3", "--", "--workdir", "w"])
  assert local.local_plan(args) == [["env", "JAX_PLATFORMS=cpu", "python3", "-m",
                                     "flamingo_jax.training.train", "--workdir", "w", "--distributed=off"]]
  with pytest.raises(ValueError, match="sets --distributed itself"):
    local.local_plan(local.parse_args(["--", "--distributed=auto"]))
