"""Losing a host: when one of several `jax.distributed` processes dies (SIGKILL), every other
one exits non-zero within the heartbeat timeout, naming the lost process; a death during an
async checkpoint save leaves the previous step the newest complete one, which both
processes restore after a restart (the partial step is deleted)."""
import glob
import os
import signal
import time

import pytest

import multihost
from flip_jax import checkpoint, config_base, config_check, distributed, writers
from helpers import tiny_flip_config

HEARTBEAT_S = 40  # the peer watch sees a lost process after 10 s (a busy 2-core machine
#                   can stall a healthy process's watch thread for seconds)

# A training-like loop: every step a jitted reduction over both processes' devices.
STEPS_SNIPPET = f"""
import time
from flip_jax import config_base, distributed
config = config_base.base_config()
config.distributed.heartbeat_timeout_s = {HEARTBEAT_S}
distributed.initialize(config)
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((2,), ("data",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")),
                                           np.ones((4,), np.float32))
step = jax.jit(lambda x: x * 0.5 + x.sum() * 0.1)

def loop():
  global x
  for i in range(100000):
    x = step(x).block_until_ready()
    if i == 20:
      print("running", flush=True)
    time.sleep(0.01)
distributed.run(loop)
"""


def wait_for(predicate, group, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and not predicate():
    assert all(p.poll() is None for p in group.procs), group.wait(10)
    time.sleep(0.05)
  assert predicate(), f"not reached in {timeout} s"


@pytest.mark.parametrize("victim", [1, 0])
def test_a_peer_killed_mid_step_stops_the_survivor_naming_it(victim):
  group = multihost.launch(STEPS_SNIPPET, num_processes=2, initialize=False)
  wait_for(lambda: all("running" in multihost._read(out) for out, _ in group._logs), group)
  killed_at = time.time()
  group.procs[victim].send_signal(signal.SIGKILL)
  survivor = group.procs[1 - victim]
  survivor.wait(timeout=HEARTBEAT_S + 30)  # no hang: raises if it runs on
  took = time.time() - killed_at
  results = group.wait(10)
  last_line = results[1 - victim].stderr.strip().splitlines()[-1]
  if victim == 1:  # the peer watch: a quarter of the heartbeat timeout, its own last line
    assert survivor.returncode == distributed.EXIT_PEER_LOST, results[0].stderr[-3000:]
    assert "flip_jax: process 0 of 2 lost process 1: no sign of life" in last_line
    assert took < HEARTBEAT_S / 2
  else:  # process 0 hosts the coordination service: JAX terminates the others at once
    assert survivor.returncode == -signal.SIGABRT
    assert "the leader task was preempted/died" in results[1].stderr
    assert took < HEARTBEAT_S


# Each process trains the tiny FLIP run; with `die_at`, process 1 dies (SIGKILL) in the
# background thread of the async save of that step, before its part is written: the step
# can never be committed. `until` stops (with a checkpoint) after that step.
TRAIN_SNIPPET = """
import os, signal, sys, time
from absl import flags
from clu import periodic_actions
from flip_jax import checkpoint, config_check, data, distributed, evaluate, objectives, train
from orbax.checkpoint._src.checkpointers import async_checkpointer
import test_host_loss

flags.FLAGS.mark_as_parsed()
flags.FLAGS.experimental_orbax_use_distributed_barrier = True
workdir, die_at, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = test_host_loss.config()
distributed.initialize(config)
import jax
if jax.process_index() == 1 and die_at:
  commit = async_checkpointer._background_wait_for_commit_futures
  def dying_commit(directory, *args, **kwargs):
    if directory.name == str(die_at):
      os.kill(os.getpid(), signal.SIGKILL)
    return commit(directory, *args, **kwargs)
  async_checkpointer._background_wait_for_commit_futures = dying_commit
mgr = checkpoint.manager(workdir, every_steps=1, keep=5)
print("newest complete step at start:", mgr.latest_step(), flush=True)
mgr.close()
out = distributed.run(lambda: train.run(config, workdir, until_step=until))
print("trained to step", int(out["state"]["step"]), flush=True)
"""


def config():
  c = tiny_flip_config(**{"model.image.depth": 1, "model.text.depth": 1})
  c.total_samples = c.batch_size * 8
  c.log_every_steps = 1
  c.ckpt_every_steps = 2
  c.distributed.heartbeat_timeout_s = HEARTBEAT_S
  return c


def test_a_peer_killed_during_an_async_save_leaves_the_previous_step_newest(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  first = multihost.launch(TRAIN_SNIPPET, args=[workdir, "4", "8"], num_processes=2,
                           env=env, initialize=False).wait(timeout=400)
  logs = "\n".join(f"--- process {r.process_id}: {r.returncode}\n{r.stderr[-3000:]}"
                   for r in first)
  assert first[1].returncode == -signal.SIGKILL, logs
  assert first[0].returncode == distributed.EXIT_PEER_LOST, logs
  assert "lost process 1" in first[0].stderr.strip().splitlines()[-1]
  ckpt_dir = os.path.join(workdir, checkpoint.CKPT_DIR)
  assert checkpoint.manager(workdir, every_steps=1, keep=5).latest_step() == 2
  assert [os.path.basename(p).split(".")[0]
          for p in glob.glob(f"{ckpt_dir}/*.orbax-checkpoint-tmp*")] == ["4"]

  second = multihost.run(TRAIN_SNIPPET, args=[workdir, "0", "3"], num_processes=2, env=env,
                         initialize=False, timeout=400)
  for out in second:  # both processes restored step 2, trained step 3 and saved it
    assert "newest complete step at start: 2" in out and "trained to step 3" in out
  assert checkpoint.manager(workdir, every_steps=1, keep=5).latest_step() == 3
  assert not glob.glob(f"{ckpt_dir}/*.orbax-checkpoint-tmp*")  # the partial step is gone
  rows = [r["step"] for r in writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r]
  assert rows == [1, 2, 3]


@pytest.mark.parametrize("key,value", [("heartbeat_timeout_s", 0),
                                       ("shutdown_timeout_s", 1),
                                       ("initialization_timeout_s", -1)])
def test_timeouts_are_validated_before_jax_distributed_starts(key, value):
  c = config_base.base_config()
  c.distributed[key] = value
  with pytest.raises(config_check.ConfigError, match=f"config.distributed.{key}"):
    distributed.initialize(c)
  assert any(f"config.distributed.{key}" in e for e in config_check._errors(c, 1))


class FakeClient:
  """The coordination service's key-value store, shared by the watches of one test."""

  def __init__(self):
    self.store, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    self.store[key] = value

  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


@pytest.fixture
def exits(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed, "_exit", lambda status, message: calls.append(
      (status, message, time.monotonic())))
  return calls


def test_the_watch_names_a_silent_peer_after_a_quarter_of_the_heartbeat_timeout(exits):
  client = FakeClient()
  watches = [distributed._PeerWatch(client, i, 3, lost_after=1.0) for i in range(3)]
  for w in watches:
    w.start()
  time.sleep(2.0)
  assert not exits  # everyone beats
  watches[2].stop()  # process 2 goes silent
  stopped = time.monotonic()
  for w in watches[:2]:
    w.join(5)
  assert sorted(e[0] for e in exits) == [distributed.EXIT_PEER_LOST] * 2
  assert sorted(e[1].split(":")[1] for e in exits) == [" process 0 of 3 lost process 2",
                                                       " process 1 of 3 lost process 2"]
  assert all(0.7 <= t - stopped <= 3.0 for *_, t in exits)


def test_the_watch_names_process_0_when_the_service_is_gone(exits):
  client = FakeClient()
  watch = distributed._PeerWatch(client, 1, 2, lost_after=1.0)
  watch.start()
  time.sleep(0.5)
  client.down = True
  watch.join(5)
  assert exits[0][0] == distributed.EXIT_PEER_LOST
  assert "process 1 of 2 lost process 0: the coordination service it hosts is unreachable" \
      in exits[0][1]
