"""Multi-host start-up: `jax.distributed.initialize()` when the run spans several processes,
and what a process does when another one dies.

TPU pods and SLURM clusters are auto-detected by JAX (`config.distributed.auto=True`, or
implied by SLURM_JOB_ID / a multi-worker TPU_WORKER_HOSTNAMES); anything else sets
`config.distributed.{coordinator_address,num_processes,process_id}` or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.

Losing a host. When one process dies (kernel panic, OOM kill, maintenance), the others are
typically waiting in a collective (on TPU/GPU it never returns; gloo on CPU fails at once)
or in a checkpoint barrier. Two things make every survivor exit non-zero, promptly:
- JAX's coordination service (process 0 hosts it) declares a process dead once it sent no
  heartbeat for `config.distributed.heartbeat_timeout_s` and then terminates every other
  process (a fatal log, SIGABRT); if process 0 itself dies, the others terminate at once.
- A peer watch (`_PeerWatch`, a thread of each process) sees the lost process first, after
  a quarter of that time, and exits with status `EXIT_PEER_LOST` and a last log line that
  names it: `flip_jax: process 0 of 2 lost process 1: ...`.
Orbax commits a checkpoint step only once every process finished writing its part, so a
death mid-save leaves the previous step the newest; the next start deletes the partial one.
Restarting every process with the same command resumes from there.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed  # the client Orbax's barriers use too
from jax.sharding import NamedSharding, PartitionSpec as P

from flip_jax import config_check

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: nothing is wrong with this process, restart the job
_KEY_PREFIX = "flip_jax/alive/"
_watch: _PeerWatch | None = None
_exit_lock = threading.Lock()


def _settings(config) -> dict:
  d = config.distributed
  out = {}
  addr = d.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if addr:
    out["coordinator_address"] = addr
  n = d.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0))
  if n:
    out["num_processes"] = n
  pid = d.process_id if d.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
  if pid >= 0:
    out["process_id"] = pid
  return out


def initialize(config) -> bool:
  """Returns True when jax.distributed was initialised (then the peer watch runs too)."""
  config_check.validate_distributed(config)
  kwargs = _settings(config)
  multi_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  auto = config.distributed.auto or "SLURM_JOB_ID" in os.environ or multi_tpu
  if kwargs.get("num_processes", 1) > 1 or (auto and not kwargs):
    d = config.distributed
    jax.distributed.initialize(**kwargs, initialization_timeout=d.initialization_timeout_s,
                               heartbeat_timeout_seconds=d.heartbeat_timeout_s,
                               shutdown_timeout_seconds=d.shutdown_timeout_s)
    if jax.process_count() > 1:
      _first_collective(d.initialization_timeout_s)
      _start_watch(d.heartbeat_timeout_s)
    return True
  return False


def leave() -> None:
  """This process stops together with the others (the run ended, or an error every process
  raises alike): the peer watch stops, and JAX's shutdown barrier then waits for them."""
  global _watch
  if _watch is not None:
    _watch.stop()
    _watch = None


def run(fn, *, alike: tuple[type[BaseException], ...] = ()):
  """`fn()` as one process of the run: errors of the `alike` types (every process raises
  them at the same point, e.g. a bad config) and a normal end leave together with the
  others; any other error goes to `exit_after_error`."""
  try:
    result = fn()
  except alike:
    leave()
    raise
  except Exception:
    exit_after_error()
    raise
  leave()
  return result


def exit_after_error() -> None:
  """Call from an `except` block. On one process: returns (re-raise). On several: the error
  may stem from a lost peer (a failed collective or barrier), so the peer watch gets the
  time to name it; otherwise this process exits with status 1 all the same, without JAX's
  shutdown barrier (the others are not there: they notice this process is gone)."""
  if _watch is None:
    return
  logging.exception("process %d of %d: the run failed", jax.process_index(),
                    jax.process_count())
  _watch.finished.wait(_watch.lost_after + 3 * _watch.interval)
  _exit(1, f"flip_jax: process {jax.process_index()} of {jax.process_count()} stopped by "
           f"the error above; no other process was lost")


def _client():
  return jax_distributed.global_state.client  # the one Orbax's barriers use too


def _first_collective(timeout_s: int) -> None:
  """A sum over every device, compiled first, then run by all processes at once (after a
  coordination-service barrier). On CPU the first collective sets up gloo's connections,
  which give a late process only 30 s (later ones wait as long as it takes): without this,
  a restart where one process compiles while another reads the persistent compilation
  cache can fail. Before the peer watch starts: a process waiting there holds the GIL."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P("all")), np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))
  total = total.lower(ones).compile()
  _client().wait_at_barrier("flip_jax: first collective", timeout_s * 1000)
  assert int(total(ones)) == jax.device_count()


def _start_watch(heartbeat_timeout_s: int) -> None:
  global _watch
  _watch = _PeerWatch(_client(), jax.process_index(), jax.process_count(),
                      lost_after=heartbeat_timeout_s / 4)
  _watch.start()
  # A program that ends without `run`/`leave` (all processes exit alike) stops the watch
  # before JAX's own exit hook shuts the coordination service down (hooks run last-first).
  atexit.register(leave)


def _exit(status: int, message: str) -> None:
  _exit_lock.acquire()  # the first caller exits; a second (watch vs. main thread) waits for it
  logging.error("%s", message)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # no atexit: JAX's shutdown barrier would wait for the lost process


class _PeerWatch(threading.Thread):
  """Every `interval` s each process bumps its counter in the coordination service's
  key-value store and reads everyone's; a peer whose counter stood still for `lost_after`
  s is lost. That is a quarter of JAX's heartbeat timeout: the service may declare a process
  dead as early as half its timeout after the death (heartbeats go out every half timeout),
  and this process must exit, naming the peer, before the service terminates it. A failing
  key-value call means process 0, which hosts the service, is gone."""

  def __init__(self, client, process: int, count: int, *, lost_after: float):
    super().__init__(name="flip_jax_peer_watch", daemon=True)
    self.client, self.process, self.count = client, process, count
    self.lost_after = lost_after
    self.interval = max(0.2, lost_after / 5)
    self.finished = threading.Event()
    self._stop_event = threading.Event()

  def stop(self) -> None:
    self._stop_event.set()
    self.join()

  def run(self) -> None:
    beat = 0
    start = time.monotonic()
    seen = {peer: (None, start) for peer in range(self.count) if peer != self.process}
    while not self._stop_event.wait(self.interval):
      beat += 1
      try:
        self.client.key_value_set(f"{_KEY_PREFIX}{self.process}", str(beat),
                                  allow_overwrite=True)
        counters = dict(self.client.key_value_dir_get(_KEY_PREFIX))
      except Exception as err:  # noqa: BLE001 - any failure: the service is unreachable
        if self._stop_event.is_set():
          return
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        self._lost([0], f"the coordination service it hosts is unreachable ({first_line})")
        return
      now = time.monotonic()
      lost = []
      for peer, (value, since) in seen.items():
        if counters.get(f"{_KEY_PREFIX}{peer}") != value:
          seen[peer] = (counters.get(f"{_KEY_PREFIX}{peer}"), now)
        elif now - since > self.lost_after:
          lost.append(peer)
      if lost:
        ages = ", ".join(f"{now - seen[p][1]:.0f} s" for p in lost)
        self._lost(lost, f"no sign of life for {ages} (config.distributed.heartbeat_timeout_s"
                         f"={4 * self.lost_after:g}; it is lost after a quarter of that)")
        return

  def _lost(self, peers: list[int], why: str) -> None:
    if self._stop_event.is_set():
      return
    self.finished.set()
    names = ", ".join(str(p) for p in peers)
    _exit(EXIT_PEER_LOST,
          f"flip_jax: process {self.process} of {self.count} lost process {names}: {why}; "
          f"stopping. Restart all processes with the same command to resume from the "
          f"newest complete checkpoint.")
