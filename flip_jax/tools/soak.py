r"""Soak test of crash safety: a short run is SIGKILLed K times at random steps and
restarted each time; its final params must equal an uninterrupted run's, bit for bit.

  python -m flip_jax.tools.soak --config=configs/flip_debug.py --kills=3 [--steps=40] \
      [--ckpt_every=5] [--seed=0] [--processes=1] [--workdir=DIR] [--config.KEY=VALUE ...]

Both runs train the same config for --steps steps, shrunk to stay short: a checkpoint
every --ckpt_every steps (asynchronous, so kills also land mid-save), metrics every step,
no evaluators. Kill steps are drawn from --seed. The last line printed is
`kills=K resumes=K params_identical=true|false` (exit status 0 only when identical).

With --processes=N > 1 both runs are N `jax.distributed` processes on 127.0.0.1 (gloo
collectives, one CPU device each), the way N hosts run: a kill SIGKILLs ONE process drawn
from --seed (every other kill waits for a checkpoint save in flight), the soak waits for
the survivors to exit on their own (non-zero: a process that lost a peer must not carry
on; `config.distributed.heartbeat_timeout_s` is lowered to 40 s) and restarts all N. The
last line is `processes=N kills=K resumes=K survivor_exit_s_max=S params_identical=...`.
"""
import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402  (also defines the distributed-barrier flag)
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flip_jax import checkpoint, config_check, distributed, train, writers  # noqa: E402


def _define_flags():
  """Flags exist only when this module is the program: its functions are also imported
  (tests) next to other modules that define --config."""
  global _CONFIG, _KILLS, _STEPS, _CKPT_EVERY, _SEED, _WORKDIR, _TIMEOUT, _TRAIN_IN, _PROCESSES
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                            lock_config=False)
  _KILLS = flags.DEFINE_integer("kills", 3, "How many times the run is SIGKILLed.")
  _STEPS = flags.DEFINE_integer("steps", 40, "Training length of both runs, in steps.")
  _CKPT_EVERY = flags.DEFINE_integer("ckpt_every", 5, "Checkpoint interval in steps.")
  _SEED = flags.DEFINE_integer("seed", 0, "Draws the kill steps.")
  _WORKDIR = flags.DEFINE_string("workdir", "", "Where both runs go (default: a temp dir).")
  _TIMEOUT = flags.DEFINE_integer("timeout", 900, "Seconds one training process may take.")
  _PROCESSES = flags.DEFINE_integer("processes", 1, "jax.distributed processes of each run.")
  _TRAIN_IN = flags.DEFINE_string("train_in", "", "Internal: train the shrunk config here.")
  flags.mark_flags_as_required(["config"])


HEARTBEAT_TIMEOUT_S = 40  # with several processes: a survivor exits ~10 s after a loss


def shrink(config, steps: int, ckpt_every: int, processes: int = 1):
  """The config as both runs train it."""
  if processes > 1:
    config.distributed.heartbeat_timeout_s = min(config.distributed.heartbeat_timeout_s,
                                                 HEARTBEAT_TIMEOUT_S)
  config.total_samples = steps * config.batch_size
  config.optim.warmup_samples = min(config.optim.warmup_samples, config.total_samples)
  config.log_every_steps = 1
  config.ckpt_every_steps = ckpt_every
  config.ckpt_async = True
  config.evals = {}
  return config


def kill_steps(kills: int, steps: int, seed: int) -> list[int]:
  """Distinct, increasing steps in [2, steps - 2] (as many as fit)."""
  candidates = np.arange(2, steps - 1)
  chosen = np.random.default_rng(seed).choice(candidates, min(kills, len(candidates)),
                                              replace=False)
  return sorted(int(s) for s in chosen)


def last_step(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  try:
    return max((r["step"] for r in writers.read_jsonl(path) if "loss" in r), default=0)
  except ValueError:  # a line being written
    return 0


def newest_step(workdir: str) -> int:
  """The newest complete checkpoint's step (0: none)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return max(ocp.utils.checkpoint_steps(ckpt_dir), default=0) if os.path.isdir(ckpt_dir) else 0


def writers_truncate(workdir: str, step: int) -> None:
  try:
    writers.truncate_after(os.path.join(workdir, "metrics.jsonl"), step)
  except ValueError:  # a line cut by the kill: the restarted run truncates it itself
    pass


def victims(kills: int, processes: int, seed: int) -> list[int]:
  """Which process each kill hits: a random order of 0, 1, ..., N-1, 0, 1, ... (so process
  0, which hosts the coordination service, and the others are all hit when kills >= N)."""
  rng = np.random.default_rng([seed, 1])
  return [int(p) for p in rng.permutation(np.resize(np.arange(processes), kills))]


def partial_checkpoints(workdir: str) -> set[str]:
  """Orbax's temporary step directories: saves in flight, or left by a kill."""
  return set(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def free_port() -> int:
  """A TCP port nothing listens on now (for process 0's coordination service)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


class Trainer:
  """Starts `python -m flip_jax.tools.soak --train_in=DIR` with this command's flags, in
  --processes jax.distributed processes (process i logs to `<log_name>` + `_p<i>`)."""

  def __init__(self, workdir: str, log_name: str, processes: int = 1):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "..", "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PLATFORMS="cpu")
    names = [log_name] if processes == 1 else [f"{log_name}_p{i}" for i in range(processes)]
    self.log_paths = [os.path.join(workdir, f"{n}.log") for n in names]
    self.logs = [open(path, "w") for path in self.log_paths]
    args = [a for a in sys.argv[1:] if not a.startswith("--train_in")]
    # Sessions of their own: a kill takes a process's grain workers along.
    self.procs = [subprocess.Popen(
        [sys.executable, "-m", "flip_jax.tools.soak", *args, f"--train_in={workdir}"],
        env=dict(env, JAX_PROCESS_ID=str(i)) if processes > 1 else env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True) for i, log in enumerate(self.logs)]
    self.proc = self.procs[0]

  def running(self) -> bool:
    return all(p.poll() is None for p in self.procs)

  def kill(self, process: int | None = None) -> None:
    """SIGKILLs one process (default: all that still run)."""
    for i, proc in enumerate(self.procs):
      if (process is None or i == process) and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

  def wait_survivors(self, timeout: float) -> tuple[float, list[int]]:
    """(seconds until every process had exited on its own, their exit statuses); kills
    them and raises if they run past `timeout`."""
    start = time.time()
    try:
      codes = [p.wait(timeout=max(0.1, start + timeout - time.time())) for p in self.procs]
    except subprocess.TimeoutExpired as err:
      self.kill()
      raise RuntimeError(f"a surviving process still ran {timeout:.0f} s after its peer "
                         f"was killed: see {self.log_paths}") from err
    finally:
      self._close()
    return time.time() - start, codes

  def verdict(self, process: int) -> str:
    """The log line where a process says why it stopped: flip_jax's `lost process N`, or
    JAX's `Terminating process ...` (when process 0 died); else its last line."""
    with open(self.log_paths[process], errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
    said = [line for line in lines if "lost process" in line or "Terminating process" in line]
    return (said or lines or [""])[-1]

  def finish(self, timeout: float) -> int:
    """The first non-zero exit status of the processes, else 0."""
    deadline = time.time() + timeout
    try:
      codes = [p.wait(timeout=max(0.1, deadline - time.time())) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      raise
    finally:
      self._close()
    return next((c for c in codes if c), 0)

  def _close(self) -> None:
    for log in self.logs:
      log.close()


def same_params(workdir_a: str, workdir_b: str, step: int) -> bool:
  """Both newest checkpoints are at `step` and hold bitwise equal params."""
  if {checkpoint.find_checkpoint_dir(d)[1] for d in (workdir_a, workdir_b)} != {step}:
    return False
  leaves_a, tree_a = jax.tree.flatten(checkpoint.load_params(workdir_a))
  leaves_b, tree_b = jax.tree.flatten(checkpoint.load_params(workdir_b))
  return tree_a == tree_b and all(np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b))


def soak(root: str) -> bool:
  reference, killed = os.path.join(root, "uninterrupted"), os.path.join(root, "killed")
  for d in (reference, killed):
    os.makedirs(d, exist_ok=True)
  n = _PROCESSES.value
  plan = kill_steps(_KILLS.value, _STEPS.value, _SEED.value)
  hit = victims(len(plan), n, _SEED.value)
  print(f"soak: {_STEPS.value} steps, {n} process(es), kills planned at steps {plan}"
        + (f" of processes {hit}" if n > 1 else "") + f", in {root}", flush=True)

  start = time.time()
  if (code := Trainer(reference, "train", n).finish(_TIMEOUT.value)) != 0:
    raise RuntimeError(f"the uninterrupted run failed ({code}): see {reference}/train*.log")
  print(f"soak: uninterrupted run done in {time.time() - start:.0f}s", flush=True)

  kills = resumes = 0
  exit_s = []
  for segment, target in enumerate(plan + [None]):
    if segment:
      resumes += 1
    # Progress counts from the newest complete checkpoint (a kill mid-save may have run
    # past the next target): the restart would drop the later metrics rows too.
    resume = newest_step(killed)
    writers_truncate(killed, resume)
    left_over = partial_checkpoints(killed)
    run = Trainer(killed, f"train_{segment}", n)
    if target is None:
      if (code := run.finish(_TIMEOUT.value)) != 0:
        raise RuntimeError(f"the last restart failed ({code}): see {killed}/"
                           f"train_{segment}*.log")
      if partial_checkpoints(killed):
        raise RuntimeError(f"partial checkpoints outlived the restarts: "
                           f"{sorted(partial_checkpoints(killed))}")
      break
    mid_save = n > 1 and segment % 2 == 0  # kills 1, 3, ...: while a save is in flight
    deadline = time.time() + _TIMEOUT.value
    target = max(target, resume + 1)
    while run.running() and time.time() < deadline and last_step(killed) < target:
      time.sleep(0.02)
    while mid_save and run.running() and time.time() < deadline and not (
        partial_checkpoints(killed) - left_over):
      time.sleep(0.002)  # a tiny model's save is in flight for a few tens of ms
    if not run.running():
      raise RuntimeError(f"the run ended before step {target}"
                         f"{' with a save in flight' if mid_save else ''}: see {killed}/"
                         f"train_{segment}*.log")
    victim = hit[segment] if n > 1 else None
    in_flight = bool(partial_checkpoints(killed) - left_over)
    run.kill(victim)
    kills += 1
    if n == 1:
      print(f"soak: SIGKILL at step {last_step(killed)} (planned {target})", flush=True)
      continue
    seconds, codes = run.wait_survivors(_TIMEOUT.value)
    survivors = [i for i in range(n) if i != victim]
    if any(codes[i] == 0 for i in survivors):
      raise RuntimeError(f"a survivor exited 0 after losing process {victim}: see {killed}/"
                         f"train_{segment}*.log")
    exit_s.append(seconds)
    print(f"soak: SIGKILL process {victim} at step {last_step(killed)} (planned {target}"
          f"{', save in flight' if in_flight else ''}); survivors exited "
          f"{[codes[i] for i in survivors]} after {seconds:.1f}s; process {survivors[0]}: "
          f"{run.verdict(survivors[0])[:300]}", flush=True)

  identical = same_params(reference, killed, _STEPS.value)
  summary = f"kills={kills} resumes={resumes} params_identical={str(identical).lower()}"
  if n > 1:
    summary = (f"processes={n} kills={kills} resumes={resumes} "
               f"survivor_exit_s_max={max(exit_s, default=0):.1f} "
               f"params_identical={str(identical).lower()}")
  print(summary, flush=True)
  return identical


def train_here(workdir: str) -> None:
  """One process of a run (as `flip_jax.main` runs it): joins the others if there are
  several, trains, and on a lost peer exits as `flip_jax.distributed` says."""
  config = shrink(_CONFIG.value, _STEPS.value, _CKPT_EVERY.value, _PROCESSES.value)
  distributed.initialize(config)
  if _PROCESSES.value > 1:
    # Orbax's barriers through the coordination service, not a collective (gloo gives a
    # late process only 30 s), as tests/test_multihost.py does.
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  distributed.run(lambda: train.run(config, workdir),
                  alike=(config_check.ConfigError, train.NonFiniteError))


def main(argv):
  del argv
  if _TRAIN_IN.value:
    train_here(_TRAIN_IN.value)
    return
  logging.set_verbosity(logging.WARNING)  # this process only watches and compares
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="flip_jax_soak_")
  sys.exit(0 if soak(root) else 1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
