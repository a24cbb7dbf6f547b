"""The command line: a run killed with SIGKILL continues from its last checkpoint."""
import os
import signal
import subprocess
import sys
import time

from flip_jax import writers
from helpers import ROOT

ARGS = ["--config.batch_size=32", "--config.total_samples=960", "--config.ckpt_every_steps=5",
        "--config.log_every_steps=1", "--config.ckpt_async=false", "--config.optim.warmup_samples=0",
        "--config.model.image.depth=1", "--config.model.text.depth=1",
        "--config.evals.zeroshot.every_steps=0"]


def launch(workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(
      [sys.executable, "-m", "flip_jax.main", f"--config={ROOT}/configs/flip_debug.py",
       f"--workdir={workdir}", *ARGS], env=env, cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [r["step"] for r in writers.read_jsonl(path) if "loss" in r]


def checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_sigkill_then_rerun_continues(tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir)
  deadline = time.time() + 240
  while time.time() < deadline and not [s for s in checkpoints(workdir) if s >= 10]:
    assert proc.poll() is None, "the run exited early"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  kept = checkpoints(workdir)
  assert kept and max(kept) >= 10, "no checkpoint before the kill"
  assert max(steps_logged(workdir)) < 30, "the run finished before it was killed"
  proc = launch(workdir)
  assert proc.wait(timeout=300) == 0
  steps = steps_logged(workdir)
  assert steps == list(range(1, 31))  # nothing repeated beyond the checkpoint, none skipped
  assert max(checkpoints(workdir)) == 30


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir)
  deadline = time.time() + 240
  while time.time() < deadline and len(steps_logged(workdir)) < 3:
    assert proc.poll() is None, "the run exited early"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  last = max(steps_logged(workdir))
  assert last < 30 and max(checkpoints(workdir)) == last  # a checkpoint at the current step
