"""A step with a NaN/Inf loss or gradient leaves the state unchanged and is counted; after
config.max_nonfinite_steps in a row the run stops, its newest checkpoint the last good one."""
import grain
import jax
import numpy as np
import pytest

from flip_jax import checkpoint, data, sharding, train, writers
from helpers import random_batch, tiny_flip_config


def test_a_nonfinite_step_changes_nothing_but_the_counts():
  config = tiny_flip_config()
  config.optim.warmup_samples = 0
  mesh = sharding.make_mesh({"data": -1})
  trainer = train.Trainer(config, mesh)
  good = random_batch(config)
  nan = dict(good, image=np.where(np.arange(good["image"].size).reshape(good["image"].shape)
                                  == 5, np.nan, good["image"]).astype(np.float32))
  inf = dict(good, image=np.full_like(good["image"], np.inf))
  put = lambda b: {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in b.items()}
  with jax.set_mesh(mesh):
    state = trainer.init()
    before = jax.device_get(state)
    for step, batch in enumerate([nan, inf], 1):
      state, metrics = trainer.step(state, put(batch))
      assert not np.isfinite(float(metrics["loss"]))
      after = jax.device_get(state)
      for part in ("params", "extra", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, after[part], before[part])
      assert int(after["step"]) == step
      assert {k: int(v) for k, v in after["nonfinite"].items()} == {
          "total": step, "streak": step, "longest_streak": step}
    state, metrics = trainer.step(state, put(good))
    after = jax.device_get(state)
  assert np.isfinite(float(metrics["loss"]))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), after["params"],
                                       before["params"]))
  assert max(moved) > 0
  assert {k: int(v) for k, v in after["nonfinite"].items()} == {
      "total": 2, "streak": 0, "longest_streak": 2}


class NaNFrom(grain.DatasetIterator):
  """The training batches, with NaN images from batch `first` on."""

  def __init__(self, parent, first):
    super().__init__(parent)
    self._first, self._count = first, 0

  def __next__(self):
    batch = next(self._parent)
    self._count += 1
    if self._count >= self._first:
      # float images pass the step's normalisation unchanged (uint8 cannot hold NaN)
      batch = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))
    return batch

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def test_run_stops_after_max_nonfinite_steps_keeping_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  config = tiny_flip_config()
  config.update(max_nonfinite_steps=3, ckpt_every_steps=3, log_every_steps=1,
                ckpt_async=False)
  build = data.build_train
  monkeypatch.setattr(data, "build_train", lambda *a, **k: NaNFrom(build(*a, **k), first=4))
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteError, match=r"stopped at step 6: 3 consecutive steps"
                     r".*max_nonfinite_steps=3.*Newest checkpoint: step 3"):
    train.run(config, workdir)
  assert max(checkpoint.manager(workdir, every_steps=1, keep=5).all_steps()) == 3
  rows = [r for r in writers.read_jsonl(f"{workdir}/metrics.jsonl") if "loss" in r]
  assert [(r["step"], r["nonfinite_steps"]) for r in rows] == [
      (1, 0), (2, 0), (3, 0), (4, 1), (5, 2), (6, 3)]


def test_the_ema_teacher_skips_a_nonfinite_step_too():
  from test_extrema import one_device_trainer, tiny_config, two_view_batch
  config = tiny_config()
  trainer, mesh = one_device_trainer(config)
  good = two_view_batch(config)
  bad = dict(good, image2=np.full_like(good["image2"], np.nan))  # only the teacher's view
  with jax.set_mesh(mesh):
    state = trainer.init()
    before = jax.device_get(state)
    state, _ = trainer.step(state, bad)
    after_bad = jax.device_get(state)
    state, _ = trainer.step(state, good)
    after_good = jax.device_get(state)
  for part in ("params", "extra", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, after_bad[part], before[part])
  assert int(after_bad["nonfinite"]["total"]) == 1
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(after_good["extra"]),
                                               jax.tree.leaves(before["extra"]))]
  assert max(moved) > 0  # a finite step does update the EMA teacher
