"""The command line: a run killed with SIGKILL (even in the middle of an asynchronous
checkpoint save) continues from its newest complete checkpoint; SIGTERM saves and exits 0."""
import os
import re
import signal
import subprocess
import sys
import time

import multihost
from flip_jax import writers
from helpers import ROOT

ARGS = ["--config.batch_size=32", "--config.total_samples=960", "--config.ckpt_every_steps=5",
        "--config.log_every_steps=1", "--config.ckpt_async=false", "--config.optim.warmup_samples=0",
        "--config.model.image.depth=1", "--config.model.text.depth=1",
        "--config.evals.zeroshot.every_steps=0"]


def compile_cache(workdir) -> dict:
  """A restart reuses the executables of the first start: same code, less compile time."""
  return {"JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(workdir), "xla_cache"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def launch(workdir, log=subprocess.DEVNULL):
  """flip_jax.main on flip_debug, its console (stdout) to `log`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3",
             **compile_cache(workdir))
  return subprocess.Popen(
      [sys.executable, "-m", "flip_jax.main", f"--config={ROOT}/configs/flip_debug.py",
       f"--workdir={workdir}", *ARGS], env=env, cwd=ROOT,
      stdout=log, stderr=subprocess.DEVNULL)


def resumed_from(log: str) -> list[int]:
  return [int(m) for m in re.findall(r"resuming from \S+ step (\d+)", log)]


def steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [r["step"] for r in writers.read_jsonl(path) if "loss" in r]


def checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# flip_jax.main, with Orbax's commit of step `argv[1]` (the rename of its temporary
# directory, done by a background thread while training goes on) held up for minutes.
SLOW_COMMIT = """
import asyncio, os, sys
from absl import app
from orbax.checkpoint._src.path import atomicity
from flip_jax import main

slow_step, marker = sys.argv[1], os.path.join(sys.argv[2].split("=", 1)[1], "committing")
commit = atomicity.AtomicRenameTemporaryPath.finalize
async def slow_commit(self):
  if self.get_final().name == slow_step:
    open(marker, "w").close()
    await asyncio.sleep(300)
  return await commit(self)
atomicity.AtomicRenameTemporaryPath.finalize = slow_commit
sys.argv = ["flip_jax.main", *sys.argv[2:]]
app.run(main.main)
"""


def main_args(workdir):
  return [f"--workdir={workdir}", f"--config={ROOT}/configs/flip_debug.py", *ARGS,
          "--config.ckpt_async=true", "--config.ckpt_keep=5", "--config.host_malloc_reuse=true"]


def test_sigkill_during_an_async_save_restarts_from_the_newest_complete_checkpoint(
    tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  group = multihost.launch(SLOW_COMMIT, args=["15", *main_args(workdir)], num_processes=1,
                           env=compile_cache(workdir), initialize=False)
  deadline = time.time() + 600
  while time.time() < deadline and not os.path.exists(os.path.join(workdir, "committing")):
    assert group.procs[0].poll() is None, group.wait(10)[0].stderr[-3000:]
    time.sleep(0.1)
  assert os.path.exists(os.path.join(workdir, "committing")), "no commit of step 15 began"
  group.kill()  # SIGKILL while step 15 is written but not yet committed
  group.wait(60)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  partial = [n for n in os.listdir(ckpt_dir) if n.startswith("15.orbax-checkpoint-tmp")]
  assert partial and max(checkpoints(workdir)) == 10
  for root, _, files in os.walk(os.path.join(ckpt_dir, partial[0])):
    for name in files:  # make it half-written for sure: restoring it would fail
      open(os.path.join(root, name), "w").close()

  result = multihost.launch(SLOW_COMMIT, args=["none", *main_args(workdir)], num_processes=1,
                            env=compile_cache(workdir), initialize=False).wait(600)[0]
  assert result.returncode == 0, result.stderr[-3000:]
  assert resumed_from(result.stdout) == [10]  # the console line
  assert "host malloc reuse: applied" in result.stdout  # before jax started (host_malloc)
  console = result.stdout.splitlines()  # progress lines of steps 11..30, the summary last
  assert [line.split()[1] for line in console if line.startswith("step ")] == [
      f"{s}/30" for s in range(11, 31)]
  summary = next(i for i, line in enumerate(console) if line.startswith("done: step 30/30 in "))
  assert console[summary + 1].startswith("  final: ") and "loss" in console[summary + 1]
  assert any(line.startswith("  best eval/zeroshot/top1: ") for line in console[summary:])
  assert console[-1].startswith("  checkpoint: step 30 in ")
  assert steps_logged(workdir) == list(range(1, 31))  # nothing repeated, none skipped
  assert max(checkpoints(workdir)) == 30
  assert not [n for n in os.listdir(ckpt_dir) if "tmp" in n]  # the leftover was removed


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir)
  deadline = time.time() + 600
  while time.time() < deadline:
    # Whether it ran before what it logged: a run that ends between the two reads (a
    # starved test process, a fast step) is not taken for one that exited early.
    running = proc.poll() is None
    if steps_logged(workdir):
      break
    assert running, "the run exited before logging a step"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # after the first logged step, 29 before the end
  assert proc.wait(timeout=300) == 0
  last = max(steps_logged(workdir))
  assert last < 30 and max(checkpoints(workdir)) == last  # a checkpoint at the current step
  with open(tmp_path / "resumed.log", "w+") as log:
    proc = launch(workdir, log)
    assert proc.wait(timeout=600) == 0
    log.seek(0)
    assert resumed_from(log.read()) == [last]
  assert steps_logged(workdir) == list(range(1, 31))  # continued at last + 1
  assert max(checkpoints(workdir)) == 30
