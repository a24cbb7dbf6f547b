"""Optimizer from config: AdamW, schedules in samples seen, regex parameter groups.

Parameter groups are `optax.multi_transform` labels derived from '/'-joined param paths:
`freeze` regexes get no update (`optax.set_to_zero`, no moments kept), `lr_mults`
regexes get their own AdamW with a scaled schedule; weight decay is masked by the
`no_decay` regexes. An objective may add per-param lr scales (layer-wise lr decay in
fine-tuning, `Objective.lr_scales`); they multiply the regex multipliers.
"""
from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flip_jax import trees


def peak_lr(config) -> float:
  return config.optim.lr_per_256 * config.batch_size / 256


def schedule(config) -> Callable:
  """lr as a function of the optimizer step, defined over samples seen (step * batch)."""
  o, batch = config.optim, config.batch_size
  peak, total, warmup = peak_lr(config), float(config.total_samples), float(o.warmup_samples)

  def lr(step):
    samples = jnp.asarray(step, jnp.float32) * batch
    warm = peak * samples / max(warmup, 1.0)
    t = jnp.clip((samples - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
    if o.schedule == "cosine":
      end = peak * o.end_lr_ratio
      main = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * t))
    elif o.schedule == "step":
      # Milestones are fractions of the whole run, warmup included (SimMIM's 'multistep':
      # epoch 700 of 800).
      drops = sum((samples >= b * total).astype(jnp.float32) for b in o.step_at)
      main = peak * 0.1 ** drops
    elif o.schedule == "constant":
      main = jnp.asarray(peak, jnp.float32)
    else:
      raise ValueError(f"config.optim.schedule: unknown {o.schedule!r} "
                       "(choose 'cosine', 'step' or 'constant')")
    return jnp.where(samples < warmup, warm, main)

  return lr


def _first_match(patterns, path):
  return next((p for p in patterns if re.search(p if isinstance(p, str) else p[0], path)), None)


def decay_mask(config, params):
  """True where weight decay applies (works on multi_transform's partially masked trees)."""
  return jax.tree.map(lambda p: _first_match(config.optim.no_decay, p) is None,
                      trees.names(params))


def group_labels(config, params, lr_scales=None):
  """'frozen', 'default' or 'lr_x<mult>' per leaf; `lr_scales` (a tree like params of
  floats) multiplies the `lr_mults` regex multiplier."""
  o = config.optim
  paths = trees.names(params)
  scales = lr_scales if lr_scales is not None else jax.tree.map(lambda _: 1.0, paths)

  def label(path, scale):
    if _first_match(o.freeze, path):
      return "frozen"
    m = _first_match(o.lr_mults, path)
    mult = (float(m[1]) if m else 1.0) * float(scale)
    return "default" if mult == 1.0 else f"lr_x{mult}"

  return jax.tree.map(label, paths, scales)


def make(config, params, lr_scales=None) -> optax.GradientTransformation:
  """The full optimizer for this param tree (pure dict or any pytree of arrays);
  `lr_scales`: optional per-param lr factors (a tree like params)."""
  o = config.optim
  lr = schedule(config)

  def adamw(mult):
    return optax.adamw(lambda s: lr(s) * mult, b1=o.b1, b2=o.b2, eps=o.eps,
                       weight_decay=o.weight_decay,
                       mask=lambda tree: decay_mask(config, tree))

  labels = group_labels(config, params, lr_scales)
  used = set(jax.tree.leaves(labels))
  transforms = {"default": adamw(1.0), "frozen": optax.set_to_zero()}
  for name in used - set(transforms):
    transforms[name] = adamw(float(name[len("lr_x"):]))
  tx = optax.multi_transform(transforms, labels)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx
