"""Evaluator registry and the feature extractor they share.

Evaluators see a trained model only through `Features` (images -> embeddings, text
tokens -> embeddings, held-out batches -> validation loss), so they run the same inside
the training loop and standalone from a checkpoint; they import neither train.py nor
any objective. Each evaluator type declares its config keys with defaults (`KEYS`):
an unknown key or a bad value is an error naming it, found by `validate` (cheap, called
by config_check) or at the latest when the evaluator is built, before any model work.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flip_jax import sharding

REGISTRY: dict[str, type["Evaluator"]] = {}

# every_steps 0: only at the end of training. at_start: also evaluate the initial weights
# of a fresh run (step 0), the baseline the trained model is compared with.
COMMON_KEYS = {"type": "", "every_steps": 0, "at_start": False}


def register(name: str) -> Callable:
  def wrap(cls):
    REGISTRY[name] = cls
    return cls
  return wrap


# ------------------------------------------------------------------ features

@functools.lru_cache(maxsize=64)
def _jitted(fn, graphdef):
  # Cached on (fn, graphdef) so that the Features made at every evaluation during
  # training reuse one compiled executable instead of tracing a fresh closure.
  def f(state, x):
    return fn(nnx.merge(graphdef, *state), x)
  return jax.jit(f)


# Outputs are collected in a [num_batches, batch, ...] buffer sharded like each batch
# (so storing one is a local copy) and replicated once at the end: one all-gather, and
# compiled programs that do not depend on the number of batches.

def _buffer_sharding(mesh, ndim: int) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P(None, *sharding.batch_spec(ndim - 1)))


@functools.lru_cache(maxsize=16)
def _zeros(mesh, shape: tuple, dtype):
  return jax.jit(lambda: jnp.zeros(shape, dtype),
                 out_shardings=_buffer_sharding(mesh, len(shape)))


@functools.lru_cache(maxsize=16)
def _store(mesh, ndim: int):
  return jax.jit(lambda buffer, out, k: jax.lax.dynamic_update_index_in_dim(buffer, out, k, 0),
                 out_shardings=_buffer_sharding(mesh, ndim), donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _replicate(mesh):
  """Every device (of every process) gets the whole array, so each host can read it."""
  return jax.jit(lambda x: x, out_shardings=jax.NamedSharding(mesh, jax.P()))


class Features:
  """Batched, jitted feature extraction sharded over the mesh's batch axes, and the
  objective's deterministic validation loss (`loss_fn(model, batch)`) where given.

  Inputs are host data that every process holds in full (a numpy array, or any object
  with `shape`, `dtype`, `len` and `x[int_array]` rows, such as lazily decoded images);
  each process materialises only the rows of its own devices. Outputs stay on the
  devices until the end and are gathered once, replicated, so every process returns the
  same numpy array.

  Each step gives every data-parallel device `device_batch` rows, so with replicated
  params a device runs the same program on the same rows whatever the device count:
  features (and the numbers computed from them) come out bit-identical on 1 device,
  8 devices or several hosts (tested on CPU). FSDP/tensor-sharded params add
  collectives, whose reduction order may differ in the last bits.
  """

  def __init__(self, image_fn, text_fn, graphdef, state, mesh, device_batch: int = 64,
               loss_fn=None, image_kinds=None):
    """image_kinds: other image representations by name (`image(x, kind=NAME)`)."""
    self.mesh, self.state = mesh, state
    self.batch_size = device_batch * mesh.shape["data"] * mesh.shape["fsdp"]
    self._image = _jitted(image_fn, graphdef)
    self._kinds = {k: _jitted(fn, graphdef) for k, fn in (image_kinds or {}).items()}
    self._text = _jitted(text_fn, graphdef) if text_fn is not None else None
    self._loss = _jitted(loss_fn, graphdef) if loss_fn is not None else None

  @classmethod
  def of_objective(cls, objective, graphdef, state, mesh, device_batch: int = 64
                   ) -> "Features":
    """The features an objective defines (`image_features` and its other
    `image_feature_kinds`, `text_features` if it has a text tower, `validation_loss`);
    `state` = (params, extra)."""
    text = objective.text_features if objective.has_text else None
    return cls(objective.image_features, text, graphdef, state, mesh, device_batch,
               loss_fn=lambda model, batch: objective.validation_loss(
                   model, objective.prepare(batch)),
               image_kinds=objective.image_feature_kinds())

  def _put(self, x, rows: np.ndarray) -> jax.Array:
    """Global array of `x[rows]`, sharded over the batch; each process reads its rows."""
    shape = (len(rows), *x.shape[1:])
    spec = sharding.batch_spec(len(shape))
    return jax.make_array_from_callback(
        shape, jax.NamedSharding(self.mesh, spec),
        lambda index: np.asarray(x[rows[index[0]]]), dtype=x.dtype)

  def _run(self, fn, x) -> np.ndarray:
    n = len(x)
    if n == 0:
      raise ValueError("no inputs to compute features of")
    num_batches = -(-n // self.batch_size)
    buffer = None
    with jax.set_mesh(self.mesh):
      for k in range(num_batches):
        # The last batch repeats the last row up to the full size: one compiled shape.
        rows = np.minimum(np.arange(k * self.batch_size, (k + 1) * self.batch_size), n - 1)
        out = fn(self.state, self._put(x, rows))
        if buffer is None:
          buffer = _zeros(self.mesh, (num_batches, *out.shape), out.dtype)()
        buffer = _store(self.mesh, buffer.ndim)(buffer, out, k)
      gathered = np.asarray(_replicate(self.mesh)(buffer))
    return gathered.reshape(-1, *gathered.shape[2:])[:n].astype(np.float32)

  def image(self, images, kind: str = "") -> np.ndarray:
    """The default image representation, or the one named `kind`."""
    if not kind:
      return self._run(self._image, images)
    if kind not in self._kinds:
      raise ValueError(f"no image features {kind!r}; this model offers {sorted(self._kinds)}")
    return self._run(self._kinds[kind], images)

  def text(self, tokens) -> np.ndarray:
    if self._text is None:
      raise ValueError("this model has no text tower")
    return self._run(self._text, tokens)

  def loss(self, batches) -> dict[str, float]:
    """Mean of the validation loss and its metrics over equally sized batches (any sized
    iterable of batch dicts; streamed, one batch on the host at a time)."""
    if self._loss is None:
      raise ValueError("this objective defines no validation loss")
    totals: dict[str, float] = {}
    with jax.set_mesh(self.mesh):
      for batch in batches:
        placed = {k: self._put(v, np.arange(len(v))) for k, v in batch.items()}
        loss, metrics = self._loss(self.state, placed)
        for k, v in dict(metrics, loss=loss).items():
          totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(batches) for k, v in totals.items()}


# ------------------------------------------------------------------ evaluators

class EvalConfigError(ValueError):
  pass


class Evaluator:
  """Configured by one entry of `config.evals`; `run` returns {metric: float}.

  Subclasses list their keys with defaults in `KEYS` and may add value checks in
  `check`; `self.opts` holds the entry with the defaults filled in.
  """

  KEYS: dict[str, Any] = {}

  @classmethod
  def options(cls, cfg) -> dict[str, Any]:
    return {**COMMON_KEYS, **cls.KEYS, **dict(cfg)}

  @classmethod
  def validate(cls, name: str, cfg) -> list[str]:
    """Errors in one `config.evals` entry, each naming its key; reads no data."""
    known = set(COMMON_KEYS) | set(cls.KEYS)
    errors = [f"config.evals.{name}.{key}: unknown key for type {cfg['type']!r}; "
              f"known: {sorted(known)}" for key in sorted(set(cfg.keys()) - known)]
    opts = cls.options(cfg)
    if not isinstance(opts["every_steps"], int) or opts["every_steps"] < 0:
      errors.append(f"config.evals.{name}.every_steps: must be an int >= 0, got "
                    f"{opts['every_steps']!r}")
    if not isinstance(opts["at_start"], bool):
      errors.append(f"config.evals.{name}.at_start: must be True or False, got "
                    f"{opts['at_start']!r}")
    return errors + cls.check(name, opts)

  @classmethod
  def check(cls, name: str, opts: dict) -> list[str]:
    del name, opts
    return []

  def __init__(self, name: str, cfg, config, workdir: str):
    errors = self.validate(name, cfg)
    if errors:
      raise EvalConfigError("\n".join(errors))
    self.name, self.config, self.workdir = name, config, workdir
    self.opts = self.options(cfg)
    self.every_steps = int(self.opts["every_steps"])
    self.at_start = bool(self.opts["at_start"])

  def key(self, key: str) -> str:
    """'config.evals.NAME.KEY', for error messages."""
    return f"config.evals.{self.name}.{key}"

  def run(self, features: Features) -> dict[str, float]:
    raise NotImplementedError


def validate(evals) -> list[str]:
  """Errors of every entry of `config.evals`, without reading data."""
  errors = []
  for name, cfg in evals.items():
    kind = cfg.get("type")
    if kind not in REGISTRY:
      errors.append(f"config.evals.{name}.type: unknown {kind!r}; registered: "
                    f"{sorted(REGISTRY)}")
    else:
      errors.extend(REGISTRY[kind].validate(name, cfg))
  return errors


def build(config, workdir: str, names=None) -> list[Evaluator]:
  """The evaluators of `config.evals` (or of its entries `names`), data loaded."""
  evals = config.evals
  names = list(evals.keys()) if names is None else list(names)
  errors = validate({n: evals[n] for n in names})
  if errors:
    raise EvalConfigError("\n".join(errors))
  return [REGISTRY[evals[n]["type"]](n, evals[n], config, workdir) for n in names]


def run(evaluator: Evaluator, features: Features) -> dict[str, float]:
  """`evaluator.run`, checked to give plain floats (what the writers log)."""
  results = evaluator.run(features)
  for k, v in results.items():
    if type(v) is not float:  # pylint: disable=unidiomatic-typecheck
      raise TypeError(f"evaluator {evaluator.name!r} returned {type(v).__name__} for {k!r}")
  return results


# ------------------------------------------------------------------ shared maths

@contextlib.contextmanager
def on_host_device():
  """Context for computing on this process's first device; yields `put(x)`, which places
  host data there. Evaluators that fit or search on gathered features (kNN, linear probe)
  compute this way: every process holds the same features and gets the same result,
  whatever mesh the training loop has set around them."""
  device = jax.local_devices()[0]
  with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("host",))):
    yield lambda x: jax.device_put(np.asarray(x), device)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits (ties broken by index)."""
  top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  return float((top == labels[:, None]).any(axis=1).mean())


def topk_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{'top1', 'top5'} (top-k with k = the number of classes when there are fewer)."""
  k5 = min(5, logits.shape[1])
  return {"top1": topk_accuracy(logits, labels, 1), f"top{k5}": topk_accuracy(logits, labels, k5)}
