"""`Stepper(config)`: the trainer's jitted step on one random batch, called one step at a
time, for the step-time benchmarks (`flip_jax.benchmark`, `benchmarks/side_by_side.py`)."""
from __future__ import annotations

import time

import jax
import numpy as np

from flip_jax import sharding, train


def setting_config(config, batch: int, mask_ratio: float):
  """A copy of `config` for timing its step: this batch size and mask ratio, at least one
  batch of samples, no evaluations."""
  c = config.copy_and_resolve_references()
  c.batch_size, c.mask_ratio = batch, mask_ratio
  c.total_samples = max(c.total_samples, batch)
  c.evals = {}
  return c


def random_batch(trainer) -> dict:
  """Host arrays of the objective's batch spec: random integers below 100 (token ids,
  labels) and normal floats (images)."""
  rng = np.random.default_rng(0)
  batch = {}
  for k, s in trainer.objective.host_batch_spec().items():
    if np.issubdtype(s.dtype, np.integer):
      batch[k] = rng.integers(0, 100, s.shape).astype(s.dtype)
    else:
      batch[k] = rng.normal(size=s.shape).astype(s.dtype)
  return batch


class Stepper:
  """The trainer's jitted step on one random batch, its state threaded through the calls
  (the step donates it): `Stepper(config)()` runs one step (the first compiles) and
  returns its wall seconds. `flip_jax.benchmark.time_step` times it; so does
  benchmarks/side_by_side.py, in turns with open_clip's step."""

  def __init__(self, config):
    self.mesh = sharding.make_mesh(config.mesh)
    self.trainer = train.Trainer(config, self.mesh)
    with jax.set_mesh(self.mesh):
      self.batch = {k: jax.device_put(v, self.trainer.batch_shardings[k])
                    for k, v in random_batch(self.trainer).items()}
      self.state = self.trainer.init()
    self._compiled_text = None

  def compiled_text(self) -> str:
    """The optimised HLO of the step (lowered and compiled once, then kept)."""
    if self._compiled_text is None:
      with jax.set_mesh(self.mesh):
        self._compiled_text = self.trainer.step.lower(self.state, self.batch).compile().as_text()
    return self._compiled_text

  def __call__(self) -> float:
    with jax.set_mesh(self.mesh):
      t = time.perf_counter()
      self.state, out = self.trainer.step(self.state, self.batch)
      jax.block_until_ready((self.state, out))
      return time.perf_counter() - t
