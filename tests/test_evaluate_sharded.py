"""Evaluation is independent of how the work is spread: every evaluator gives the same
numbers on 1 device, on 8 devices, and on 2 jax.distributed processes (the way a pod's
hosts run it, each feeding its own rows; gloo collectives on CPU).

In the 2-process run each process simulates 8 devices like this one and the mesh takes
4 of each: XLA:CPU's result for a dot can change in the last bits with the number of
devices a process simulates (the linear probe, fitted on each host's first device,
amplifies that). Real hosts of one job all have the same devices. The validation loss is
a global-batch computation (the contrastive loss over the whole batch) whose float
reductions run in an order that depends on how many devices share the batch: it agrees to
float32 rounding, every other number exactly."""
import json

import jax
import numpy as np
import pytest

from flip_jax import evaluate, sharding, train
from helpers import tiny_flip_config
import multihost

EVALS = dict(zeroshot=dict(type="zeroshot"),
             retrieval=dict(type="retrieval"),
             knn=dict(type="knn"),
             probe=dict(type="linear_probe", wd_sweep=(1e-3, 1e-1), max_steps=100),
             val=dict(type="val_loss", batch_size=32))


def eval_config():
  c = tiny_flip_config()
  c.text_len = 16
  c.evals = EVALS
  return c


def evaluate_on(mesh, workdir):
  """(results of every evaluator, zero-shot image features) of a freshly initialised tiny
  FLIP model, evaluated as the training loop does (inside the mesh)."""
  c = eval_config()
  _, c = train.resolve_tokenizer(c, workdir)
  evaluators = evaluate.build(c, workdir)
  trainer = train.Trainer(c, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init()
    features = trainer.features(state)
    results = {ev.name: evaluate.run(ev, features) for ev in evaluators}
    zeroshot = next(ev for ev in evaluators if ev.name == "zeroshot")
    images = features.image(zeroshot.data.images)
  return results, images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("workdir"))
  train.resolve_tokenizer(eval_config(), path)  # written once, before processes share it
  return path


@pytest.fixture(scope="module")
def on_8_devices(workdir):
  return evaluate_on(sharding.make_mesh({"data": -1}), workdir)


def assert_same_results(got, want):
  assert set(got) == set(want)
  for name in want:
    if name == "val":
      assert set(got[name]) == set(want[name])
      for k in want[name]:
        np.testing.assert_allclose(got[name][k], want[name][k], rtol=1e-6, err_msg=k)
    else:
      assert got[name] == want[name], name


def test_one_device_equals_eight(workdir, on_8_devices):
  results_1, images_1 = evaluate_on(sharding.make_mesh({"data": 1}, jax.devices()[:1]),
                                    workdir)
  results_8, images_8 = on_8_devices
  assert len(images_8) == 360 and set(results_8) == set(EVALS)
  np.testing.assert_array_equal(images_1, images_8)
  assert_same_results(results_1, results_8)


def test_two_processes_equal_one(workdir, on_8_devices):
  outputs = multihost.run(f"""
      import json, sys
      sys.path.insert(0, "tests")
      from flip_jax import sharding
      from test_evaluate_sharded import evaluate_on
      devices = [d for p in range(2) for d in jax.local_devices(process_index=p)[:4]]
      results, images = evaluate_on(sharding.make_mesh({{"data": -1}}, devices), {workdir!r})
      print(json.dumps({{"devices": len(devices), "results": results,
                         "images": images.tolist()}}))
      """, num_processes=2, devices_per_process=8, timeout=400)
  results_8, images_8 = on_8_devices
  for out in outputs:
    got = json.loads(out.strip().splitlines()[-1])
    assert got["devices"] == 8
    np.testing.assert_array_equal(np.asarray(got["images"], np.float32), images_8)
    assert_same_results(got["results"], results_8)
