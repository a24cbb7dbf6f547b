"""Linear probe: multinomial logistic regression on frozen image features.

Features are standardised with the fitting set's mean/std; the classifier is fitted
full-batch with L-BFGS (optax) to the mean cross-entropy + wd/2 ||W||^2 (bias not
decayed). The weight decay is chosen on a validation split carved from the training
split (a fixed random `val_fraction` of it; ties -> the first in `wd_sweep`), then the
classifier is refitted on the whole training split and scored on the test split.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flip_jax.evaluate import knn
from flip_jax.evaluate.base import (Evaluator, on_host_device, register, topk_accuracy,
                                    topk_metrics)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit(x, labels, weights, wd, *, num_classes, max_steps, tol):
  onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)
  weights = weights / weights.sum()

  def loss(p):
    logits = jnp.matmul(x, p["w"], precision=jax.lax.Precision.HIGHEST) + p["b"]
    ce = optax.softmax_cross_entropy(logits, onehot)
    return jnp.sum(weights * ce) + 0.5 * wd * jnp.sum(p["w"] ** 2)

  params = {"w": jnp.zeros((x.shape[1], onehot.shape[1]), x.dtype),
            "b": jnp.zeros((onehot.shape[1],), x.dtype)}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  def not_done(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad = optax.tree.get(state, "grad")
    return (count == 0) | ((count < max_steps) & (optax.tree.norm(grad) >= tol))

  params, _ = jax.lax.while_loop(not_done, step, (params, opt.init(params)))
  return params


class Probe:
  """A fitted classifier: standardisation + linear layer, fitted to the rows of `x` where
  `rows` is True (all by default). Fits on one training split share one array shape,
  so the sweep and the final fit compile once."""

  def __init__(self, x: np.ndarray, labels: np.ndarray, num_classes: int, wd: float, *,
               max_steps: int, rows: np.ndarray | None = None, tol: float = 1e-6):
    rows = np.ones(len(x), bool) if rows is None else rows
    self.mean = x[rows].mean(axis=0)
    self.std = np.maximum(x[rows].std(axis=0), 1e-6)
    with on_host_device() as put:
      params = _fit(put(self._standardise(x)), put(labels.astype(np.int32)),
                    put(rows.astype(np.float32)), put(np.float32(wd)),
                    num_classes=num_classes, max_steps=max_steps, tol=put(np.float32(tol)))
      self.w, self.b = np.asarray(params["w"]), np.asarray(params["b"])

  def _standardise(self, x: np.ndarray) -> np.ndarray:
    return ((x - self.mean) / self.std).astype(np.float32)

  def logits(self, x: np.ndarray) -> np.ndarray:
    return self._standardise(x) @ self.w + self.b


def carve(count: int, fraction: float, seed: int) -> np.ndarray:
  """Validation mask of a training split: a fixed random `fraction` of its rows."""
  val = np.zeros(count, bool)
  val[np.random.default_rng(seed).permutation(count)[:max(1, round(count * fraction))]] = True
  return val


def sweep(x, labels, num_classes, wds, val_fraction, seed, max_steps
          ) -> tuple[float, float]:
  """(best weight decay, its validation top-1) on a validation split carved from x."""
  val = carve(len(x), val_fraction, seed)
  scores = [topk_accuracy(Probe(x, labels, num_classes, wd, max_steps=max_steps, rows=~val)
                          .logits(x[val]), labels[val], 1) for wd in wds]
  best = int(np.argmax(scores))  # first of equal scores
  return float(wds[best]), scores[best]


@register("linear_probe")
class LinearProbe(Evaluator):
  """dataset: 'digits' or a TFDS classification set (data_dir, image_key, label_key);
  fitted on train_split (minus a val_fraction for the wd_sweep), scored on test_split.
  features: which image representation, as for knn."""

  KEYS = dict(dataset="digits", train_split="train", test_split="test", data_dir="",
              image_key="image", label_key="label", features="",
              wd_sweep=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0), val_fraction=0.2,
              max_steps=500, seed=0)

  @classmethod
  def check(cls, name, opts):
    key, errors = f"config.evals.{name}", []
    wds = opts["wd_sweep"]
    if not wds or not all(isinstance(w, (int, float)) and w >= 0 for w in wds):
      errors.append(f"{key}.wd_sweep: must be a non-empty list of numbers >= 0, got {wds!r}")
    if not 0 < opts["val_fraction"] < 1:
      errors.append(f"{key}.val_fraction: must be in (0, 1), got {opts['val_fraction']!r}")
    if not isinstance(opts["max_steps"], int) or opts["max_steps"] < 1:
      errors.append(f"{key}.max_steps: must be an int >= 1, got {opts['max_steps']!r}")
    return errors

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    self.train, self.test = knn.labelled_pair(self, config)

  def run(self, features):
    o = self.opts
    train_x = features.image(self.train.images, o["features"])
    test_x = features.image(self.test.images, o["features"])
    classes = knn.num_classes(self.train, self.test)
    wd, val_top1 = sweep(train_x, self.train.labels, classes, tuple(o["wd_sweep"]),
                         float(o["val_fraction"]), int(o["seed"]), int(o["max_steps"]))
    probe = Probe(train_x, self.train.labels, classes, wd, max_steps=int(o["max_steps"]))
    return dict(topk_metrics(probe.logits(test_x), self.test.labels), wd=wd,
                val_top1=val_top1)
