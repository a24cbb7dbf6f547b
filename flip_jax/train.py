"""One training loop for every objective.

The model is split once into trained params (`nnx.Param`) and `extra` (every other
Variable: a frozen teacher, EMA weights). The train state is a plain pytree
{step, params, extra, opt_state, nonfinite}, created already sharded on the mesh and
updated by one jitted, donated step: loss/grads from the objective -> optax ->
objective.after_update. A step whose gradient is not finite (a non-finite loss makes it
so) changes nothing but the step counter and the `nonfinite` counts (see
`_guard_nonfinite`).
This file knows no method by name; it reaches them through `objectives.get(config)`.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import PartitionSpec as P

from flip_jax import (checkpoint, config_check, console, evaluate, model_state, objectives,
                      optim, sharding, trees)
from flip_jax.models.vit import resample_pos_emb


def total_steps(config) -> int:
  """Training length in steps: enough to see `total_samples` (never fewer)."""
  return math.ceil(config.total_samples / config.batch_size)


# ------------------------------------------------------------------ state & step

class Trainer:
  """Static pieces of training (graph, optimizer, shardings) and the jitted step."""

  def __init__(self, config: ml_collections.ConfigDict, mesh, objective=None):
    self.config, self.mesh = config, mesh
    self.objective = objective or objectives.get(config)
    self.graphdef, abs_params, abs_extra = model_state.split_abstract(self.objective,
                                                                      config.seed)
    param_specs, extra_specs = model_state.specs(abs_params, abs_extra, mesh,
                                                 config.fsdp_min_size)
    params_sds = nnx.to_pure_dict(abs_params)
    self.tx = optim.make(config, params_sds, self.objective.lr_scales(params_sds))
    self.lr = optim.schedule(config)
    opt_sds = jax.eval_shape(self.tx.init, params_sds)
    self.specs = {"step": P(), "params": param_specs, "extra": extra_specs,
                  "opt_state": sharding.specs_like(opt_sds, param_specs, params_sds),
                  "nonfinite": {k: P() for k in NONFINITE_COUNTS}}
    self.shardings = sharding.named(mesh, self.specs)
    self.batch_shardings = {k: jax.NamedSharding(mesh, sharding.batch_spec(len(v.shape)))
                            for k, v in self.objective.host_batch_spec().items()}
    self.rng = jax.random.key(config.seed + 1)
    self.init = jax.jit(self._init, out_shardings=self.shardings)
    self.step = jax.jit(self._step, in_shardings=(self.shardings, self.batch_shardings),
                        out_shardings=(self.shardings, None), donate_argnums=(0,))

  def _init(self) -> dict:
    model = self.objective.build(nnx.Rngs(self.config.seed))
    _, params, extra = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    extra = self.objective.init_extra(params, nnx.to_pure_dict(extra))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": extra,
            "opt_state": self.tx.init(params),
            "nonfinite": {k: jnp.zeros((), jnp.int32) for k in NONFINITE_COUNTS}}

  def fresh_state(self) -> dict:
    """A new run's state: initialised on the mesh, the objective's pretrained extra state
    (a frozen teacher) loaded, and `config.init_from`'s params if set."""
    state = self.init()
    abstract = jax.eval_shape(self._init)
    loaded = self.objective.load_extra(abstract["extra"])
    if loaded is not None:
      state["extra"] = _overlay(state["extra"], loaded, self.shardings["extra"], "extra")
    if self.config.init_from:
      params = load_init_params(self, self.config.init_from)
      state["params"] = _overlay(state["params"], params, self.shardings["params"], "params")
    return state

  def abstract_state(self) -> Any:
    """ShapeDtypeStructs with shardings: what Orbax restores onto and the planner lowers."""
    shapes = jax.eval_shape(self._init)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.shardings)

  def model(self, state) -> nnx.Module:
    return nnx.merge(self.graphdef, state["params"], state["extra"])

  def _step(self, state, batch):
    step = state["step"]
    rng = jax.random.fold_in(self.rng, step)

    def loss_fn(params):
      model = nnx.merge(self.graphdef, params, state["extra"])
      return self.objective.loss(model, self.objective.prepare(batch), rng, step)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    new, norms = self.apply_gradients(state, grads)
    return new, dict(metrics, loss=loss, **norms, lr=self.lr(step))

  @jax.named_scope("optimizer_update")  # the step profile's 'optimizer' (step_profile.py)
  def apply_gradients(self, state, grads) -> tuple[dict, dict]:
    """Everything in a step after the gradients: the guarded optimizer update, the
    objective's `after_update` (EMA teacher), step + 1; and the grad/param norms. The
    benchmark also times it alone: it costs the same at every mask ratio."""
    # Finite iff every gradient element is (a non-finite loss makes its gradient so). Not
    # `isfinite(loss)` as well: the state then depends on the loss and XLA's TPU memory
    # scheduling degrades (flip_l16 at mask 0.5 on v3: 26 GiB a core instead of 14).
    step = state["step"]
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm)

    def update(grads, old):
      updates, opt_state = self.tx.update(grads, old["opt_state"], old["params"])
      params = optax.apply_updates(old["params"], updates)
      return {"params": params, "extra": self.objective.after_update(params, old["extra"], step),
              "opt_state": opt_state}

    new = _guard_nonfinite(finite, state, update, grads)
    norms = {"grad_norm": grad_norm, "param_norm": optax.tree.norm(new["params"])}
    return dict(new, step=step + 1), norms

  def features(self, state) -> evaluate.Features:
    return evaluate.Features.of_objective(self.objective, self.graphdef,
                                          (state["params"], state["extra"]), self.mesh)


NONFINITE_COUNTS = ("total", "streak", "longest_streak")


def _guard_nonfinite(finite, state: dict, update, grads) -> dict:
  """`update(grads, old)` (new params/extra/opt_state) if the step was finite, else the old
  ones unchanged, plus the `nonfinite` counts.

  A `lax.cond`, so a non-finite step runs no update and a finite one updates in place (a
  select would hold the old and the new state at once: flip_h14 on a v3 core no longer
  fits). Not optax.apply_if_finite: that one guards only the optimizer (not the EMA/teacher
  `extra`) and applies the bad update once its limit is reached; here the state never
  takes a non-finite step and the loop stops the run instead (`check_nonfinite`).
  """
  old = {k: state[k] for k in ("params", "extra", "opt_state")}
  kept = jax.lax.cond(finite, update, lambda _, old: old, grads, old)
  counts = state["nonfinite"]
  streak = jnp.where(finite, 0, counts["streak"] + 1)
  kept["nonfinite"] = {"total": counts["total"] + (~finite).astype(jnp.int32),
                       "streak": streak,
                       "longest_streak": jnp.maximum(counts["longest_streak"], streak)}
  return kept


class NonFiniteError(RuntimeError):
  pass


def check_nonfinite(state: dict, step: int, limit: int, mgr) -> None:
  """Raises once `limit` consecutive steps had a non-finite loss or gradient.

  The longest streak is sticky, so checking only where the loop syncs anyway (log steps,
  before a checkpoint) misses none; as the check precedes every save, no checkpoint is
  written after the limit was reached.
  """
  if int(state["nonfinite"]["longest_streak"]) < limit:
    return
  mgr.wait_until_finished()
  raise NonFiniteError(
      f"stopped at step {step}: {limit} consecutive steps had a non-finite loss or "
      f"gradient (config.max_nonfinite_steps={limit}); each left the state unchanged. "
      f"Newest checkpoint: step {mgr.latest_step()} in {mgr.directory}.")


def load_init_params(trainer: Trainer, path: str) -> dict:
  """Params from another run for fine-tuning, as a nested dict: the whole tree, or with
  `config.init_prefix='DST[=SRC]'` only the model's DST subtree, read from the checkpoint's
  SRC subtree (default: DST), e.g. 'encoder' (SimMIM -> classifier) or 'encoder=image'
  (FLIP's ViT -> classifier); the rest keeps its fresh init. Same shapes, except learned
  pos-emb, which is resampled if the grid changed."""
  loaded = checkpoint.load_params(path)
  target = jax.eval_shape(trainer._init)["params"]
  dst, _, src = trainer.config.init_prefix.partition("=")
  src = src or dst
  keys = dst.split("/") if dst else []
  for i, key in enumerate(keys):
    if not isinstance(target, dict) or key not in target:
      raise ValueError(f"config.init_prefix={trainer.config.init_prefix!r}: the model has no "
                       f"subtree {'/'.join(keys[:i + 1])!r}")
    target = target[key]
  num_prefix = int(trainer.config.model.image.cls_token)

  def resample(name, value, shape):
    if name.endswith("pos_emb") and value.ndim == 2 and value.shape[1] == shape[1]:
      return resample_pos_emb(value, shape[0] - num_prefix, num_prefix)
    return value

  params = trees.fill(target, trees.flatten(loaded), f"config.init_from={path!r}", prefix=src,
                      adapt=resample)
  for key in reversed(keys):
    params = {key: params}
  return params


def _overlay(tree: dict, values: dict, shardings: dict, where: str) -> dict:
  """`tree` with the leaves that `values` (a nested dict, possibly partial) provides
  replaced, each checked for shape and placed with its sharding."""
  out = dict(tree)
  for key, value in values.items():
    if key not in tree:
      raise ValueError(f"{where}: no entry {key!r} to load into; have {sorted(tree)}")
    if isinstance(value, dict):
      out[key] = _overlay(tree[key], value, shardings[key], f"{where}/{key}")
    else:
      value = np.asarray(value)
      if value.shape != tree[key].shape:
        raise ValueError(f"{where}/{key}: loaded shape {value.shape}, the model expects "
                         f"{tree[key].shape}")
      out[key] = jax.device_put(value.astype(tree[key].dtype), shardings[key])
  return out


# ------------------------------------------------------------------ the loop

def resolve_tokenizer(config, workdir):
  """(tokenizer, config with the text tower sized to it): loads the tokenizer (or trains
  it, for the debug vocab) and returns a copy of `config` with `model.text.vocab_size` and
  `pad_id` set from it. `config` itself is left as it was."""
  from flip_jax.data import tokenizer as tokenizer_lib  # data needs grain: not for bench/plan
  tok = tokenizer_lib.get_tokenizer(config, workdir)
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.model.text.vocab_size = tok.vocab_size
    resolved.model.text.pad_id = tok.pad_id
  return tok, resolved


class _StopSignal:
  """SIGTERM/SIGINT -> finish the current step, checkpoint, return (the next start resumes).

  On several processes a signal to one host must stop all of them at the same step, or
  the others would wait in a collective forever. JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM itself and agrees a common step with every
  host; Orbax's `reached_preemption(step)` reports it. So no Python handler is installed
  there: it would replace JAX's.
  """

  def __init__(self):
    self.received = False
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d: stopping after this step with a checkpoint", signum)
    self.received = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def should_stop(self, mgr, step) -> bool:
    if jax.process_count() > 1:
      return mgr.reached_preemption(step)  # every host, every step: a sync point
    return self.received


def run(config: ml_collections.ConfigDict, workdir: str, *, until_step: int | None = None
        ) -> dict:
  """Trains until `config.total_samples`; resumes from `workdir` if it holds a checkpoint.

  `until_step` stops early (with a checkpoint) as a preemption would; the schedule is
  still the full run's, so a later call continues exactly where this one stopped.
  """
  # The loop's logging needs clu (and so TensorFlow); the step above does not, so the
  # benchmark and the planner import this module without them.
  from clu import periodic_actions  # loop only: clu needs TensorFlow (see above)
  from flip_jax import compile_cache, data, writers  # loop only: grain, clu writers

  # ---- set-up ----------------------------------------------------------
  config_check.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  compile_cache.enable(config, workdir)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = None
  if config.tokenizer:
    tokenizer, config = resolve_tokenizer(config, workdir)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    console.say(f"config: {os.path.join(os.path.abspath(workdir), 'config.json')}")
  # Evaluators load their data first: a missing dataset fails before any model work.
  evaluators = evaluate.build(config, workdir)
  trainer = Trainer(config, mesh)
  n_steps = total_steps(config)
  mgr = checkpoint.manager(workdir, every_steps=config.ckpt_every_steps, keep=config.ckpt_keep,
                           use_async=config.ckpt_async)
  data_iter = data.build_train(config, tokenizer, process_index=jax.process_index(),
                               process_count=jax.process_count())

  with jax.set_mesh(mesh), _StopSignal() as stop:
    if mgr.latest_step() is not None:
      console.say(f"resuming from {mgr.directory} step {mgr.latest_step()}")
      state = checkpoint.restore(mgr, trainer.abstract_state(), data_iter)
    else:
      state = trainer.fresh_state()
    start = int(state["step"])
    progress = console.Progress(n_steps, start)

    writer = writers.create(workdir, is_main=is_main)
    if is_main and start > 0:
      writers.truncate_after(os.path.join(workdir, "metrics.jsonl"), start)
    hooks = [periodic_actions.ReportProgress(num_train_steps=n_steps, writer=writer,
                                             every_steps=config.log_every_steps)]
    if config.profile_steps > 0 and is_main:
      hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                            logdir=workdir))
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()})
    last = {}
    if start == 0:
      for ev in (e for e in evaluators if e.at_start):
        last.update(_evaluate(ev, trainer, state, writer, 0, progress))

    # ---- train -------------------------------------------------------
    acc, t_log, since_log = None, time.time(), 0
    end = n_steps if until_step is None else min(until_step, n_steps)
    for step in range(start + 1, end + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.global_batch(mesh, next(data_iter))
        t_step = time.time()
        state, metrics = trainer.step(state, batch)
      if step == start + 1:  # the first call returns once the step is traced and compiled
        compile_s = time.time() - t_step  # (or loaded from the cache) and dispatched
        console.say(f"compile: {compile_s:.1f} s (the first step's trace + compile)")
        writer.write_scalars(step, {"compile_s": compile_s})
      acc, since_log = _accumulate(acc, metrics), since_log + 1
      progress.step_done(step)
      for hook in hooks:
        hook(step)
      log_now = step % config.log_every_steps == 0 or step == n_steps
      if log_now:
        scalars = {k: float(v) for k, v in acc.compute().items()}
        dt = time.time() - t_log
        scalars.update(samples=step * config.batch_size,
                       images_per_s=since_log * config.batch_size / max(dt, 1e-9),
                       nonfinite_steps=int(state["nonfinite"]["total"]))
        scalars.update(_skipped_samples(data_iter))
        writer.write_scalars(step, scalars)
        progress.log(step, scalars)
        last, acc, t_log, since_log = scalars, None, time.time(), 0
      for ev in evaluators:
        if (ev.every_steps and step % ev.every_steps == 0) or step == n_steps:
          last.update(_evaluate(ev, trainer, state, writer, step, progress))
          t_log = time.time()
      stopping = step == end or stop.should_stop(mgr, step)
      if log_now or stopping or mgr.should_save(step):
        check_nonfinite(state, step, config.max_nonfinite_steps, mgr)
      if checkpoint.save(mgr, step, state, data_iter, force=stopping):
        progress.saved(step, mgr.directory)
      if stopping:
        break
    mgr.wait_until_finished()
    writer.flush()
    progress.summary(int(state["step"]), last, str(mgr.directory), mgr.latest_step())
  return {"state": state, "metrics": last}


def _evaluate(ev, trainer, state, writer, step: int, progress) -> dict[str, float]:
  results = evaluate.run(ev, trainer.features(state))
  progress.evaluated(step, ev.name, results)
  scalars = {f"eval/{ev.name}/{k}": v for k, v in results.items()}
  writer.write_scalars(step, scalars)
  return scalars


def _skipped_samples(data_iter) -> dict[str, int]:
  """data/skipped/<reason>: broken records dropped so far, summed over hosts. Cumulative
  over the whole run (the counts live in the checkpointed iterator state)."""
  from flip_jax.data import quality  # loop only: data needs grain
  counts = quality.skip_counts(data_iter)
  local = np.asarray([counts.get(r, 0) for r in quality.REASONS], np.int32)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # multi-host runs only
    local = np.asarray(multihost_utils.process_allgather(local)).sum(0)
  return {f"data/skipped/{r}": int(n) for r, n in zip(quality.REASONS, local) if n}


def _accumulate(acc, metrics):
  from clu import metrics as clu_metrics  # loop only: clu needs TensorFlow
  names = sorted(metrics)
  coll = clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in names})
  single = coll.single_from_model_output(**metrics)
  return single if acc is None else acc.merge(single)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
  return out
