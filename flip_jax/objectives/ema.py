"""Exponential-moving-average weights: a teacher that follows the trained params.

EMA weights are a Variable type other than `nnx.Param`, so the trainer keeps them in
`extra`: no gradient, no optimizer state, saved in every checkpoint.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class EmaParam(nnx.Variable):
  """A weight updated as m * ema + (1 - m) * param after every optimizer step."""


def as_ema(module: nnx.Module) -> nnx.Module:
  """Turns every nnx.Param of `module` into an EmaParam (same value and axes metadata), in
  place: a copy of a student built by the same constructor becomes its EMA teacher."""
  modules = [node for _, node in nnx.iter_graph(module) if isinstance(node, nnx.Module)]
  for node in modules:
    for name, value in list(vars(node).items()):
      if isinstance(value, nnx.Param):
        setattr(node, name, EmaParam(value[...], **value.get_metadata()))
  left = jax.tree.leaves(nnx.state(module, nnx.Param))
  if left:  # a Param held outside a Module attribute (in a list or dict) would stay trained
    raise TypeError(f"as_ema: {len(left)} Params of {type(module).__name__} are not Module "
                    "attributes and were not converted")
  return module


def momentum(step, base: float, total_steps: int):
  """BYOL's cosine schedule m(t) = 1 - (1 - base)(1 + cos(pi t / T)) / 2: base at t = 0,
  rising to 1 at t = T."""
  t = jnp.asarray(step, jnp.float32) / total_steps
  return 1.0 - (1.0 - base) * (1.0 + jnp.cos(jnp.pi * t)) / 2.0


def update(ema, params, m):
  """m * ema + (1 - m) * params, leaf by leaf (trees of the same structure), in ema's dtype."""
  new = optax.incremental_update(params, ema, 1.0 - m)
  return jax.tree.map(lambda n, e: n.astype(e.dtype), new, ema)
