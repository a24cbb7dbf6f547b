"""Two `jax.distributed` processes on this machine (2 CPU devices each, gloo collectives)
train like one process with the same global batch; each reads only its own samples;
SIGTERM to one of them stops both at the same step with a checkpoint, and they resume."""
import json
import os
import signal
import time

import jax
import numpy as np

import multihost
from flip_jax import checkpoint, data, sharding, train, trees, writers
from helpers import tiny_flip_config

STEPS = 16

# Runs in each process: a spy records the digits records this process reads, and a short
# pause per step leaves time to preempt the run before it ends. gloo gives a process 30 s
# to join a collective, which a process of a busy 2-core machine can miss: everything slow
# to import is imported before the processes meet in `initialize`, and Orbax's barriers
# use the coordination service (no such limit) instead of collectives.
SNIPPET = """
import json, sys, time
from absl import flags
from clu import periodic_actions
from flip_jax import data, distributed, evaluate, objectives, sharding, train, writers
from flip_jax.data import digits
import test_multihost

flags.FLAGS.mark_as_parsed()
flags.FLAGS.experimental_orbax_use_distributed_barrier = True

read = []
get = digits.DigitsSource.__getitem__
def spy(self, index):
  record = get(self, index)
  read.append(record["key"])
  return record
digits.DigitsSource.__getitem__ = spy
to_global = sharding.global_batch
def slow_global_batch(*args):
  time.sleep(0.1)
  return to_global(*args)
sharding.global_batch = slow_global_batch

config = test_multihost.config()
distributed.initialize(config)
import jax
train.run(config, sys.argv[1])
with open(f"{sys.argv[1]}/read_by_{jax.process_index()}_{sys.argv[2]}.json", "w") as f:
  json.dump(read, f)
"""


def config():
  c = tiny_flip_config()
  c.total_samples = c.batch_size * STEPS  # global batch 16: 8 per process
  c.log_every_steps = 1
  c.ckpt_every_steps = 10
  # Adam's eps keeps float noise in near-zero gradients (whose sum order differs between
  # gloo and in-process all-reduces) from becoming full-size steps.
  c.optim.update(warmup_samples=0, eps=1e-4, lr_per_256=2e-2)
  return c


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [r["step"] for r in writers.read_jsonl(path) if "loss" in r]


def one_process_reference(workdir) -> tuple[dict, dict]:
  """(initial, final) params of the same run in this process on 4 devices, fed with both
  hosts' batches, process 0's first (its devices come first in the mesh)."""
  c = config()
  tokenizer, c = train.resolve_tokenizer(c, workdir)
  mesh = sharding.make_mesh({"data": -1}, jax.devices()[:4])
  trainer = train.Trainer(c, mesh)
  hosts = [data.build_train(c, tokenizer, process_index=i, process_count=2) for i in range(2)]
  with jax.set_mesh(mesh):
    state = trainer.fresh_state()
    initial = jax.device_get(state["params"])
    for _ in range(STEPS):
      local = [next(h) for h in hosts]
      batch = {k: jax.device_put(np.concatenate([b[k] for b in local]),
                                 trainer.batch_shardings[k]) for k in local[0]}
      state, _ = trainer.step(state, batch)
  return initial, jax.device_get(state["params"])


def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  # The restart reuses the first start's executables: same code, less compile time.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  group = multihost.launch(SNIPPET, args=[workdir, "first"], num_processes=2,
                           devices_per_process=2, env=env, initialize=False)
  deadline = time.time() + 600
  while time.time() < deadline and max(logged_steps(workdir), default=0) < 3:
    assert all(p.poll() is None for p in group.procs), group.wait(10)
    time.sleep(0.2)
  assert max(logged_steps(workdir), default=0) >= 3, "no progress in 10 minutes"
  group.send_signal(signal.SIGTERM, process_id=1)  # one host is preempted
  results = group.wait(timeout=600)
  assert [r.returncode for r in results] == [0, 0], results[1].stderr[-3000:]
  stopped = max(logged_steps(workdir))
  assert 3 <= stopped < STEPS
  saved = checkpoint.manager(workdir, every_steps=1, keep=3).latest_step()
  assert saved == stopped  # both hosts stopped at the same step and saved it

  multihost.run(SNIPPET, args=[workdir, "second"], num_processes=2, devices_per_process=2,
                env=env, initialize=False, timeout=600)
  assert logged_steps(workdir) == list(range(1, STEPS + 1))  # written once, by process 0
  params, step = checkpoint.load_params(workdir), checkpoint.find_checkpoint_dir(workdir)[1]
  assert step == STEPS

  for run in ("first", "second"):
    keys = [json.load(open(f"{workdir}/read_by_{i}_{run}.json")) for i in range(2)]
    indices = [{int(k.rsplit("-", 1)[1]) for k in host} for host in keys]
    assert indices[0] and indices[1]
    assert all(i % 2 == 0 for i in indices[0]) and all(i % 2 == 1 for i in indices[1])

  initial, reference = one_process_reference(str(tmp_path / "reference"))
  got, want, start = (by_name(t) for t in (params, reference, initial))
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=name)
  assert max(np.abs(want[n] - start[n]).max() for n in want) > 5e-3  # it trained


def by_name(tree) -> dict:
  return {name: np.asarray(leaf) for name, leaf in trees.flatten(tree).items()}
