"""`materialize(x)`: x, and in the backward pass its cotangent, written to memory on CPU,
so XLA cannot fuse the computation that produced it into each consumer.

Why: in an unrolled transformer the residual stream x_{l+1} = x_l + attn + mlp is a chain
of elementwise adds, and so is its gradient. XLA:CPU fuses elementwise producers into
every consumer that can take them, duplicating them; each LayerNorm (forward, backward,
and the transposed copies the weight-gradient matmuls read) then recomputes the whole
stream from the first layer on: O(depth²) work. On ViT-B/16 + text (flip_b16, batch 8) the
`norm` category of `benchmark --profile` took 6.0 of 23.7 s at mask 0 before this.
`jax.lax.optimization_barrier` would say the same, but XLA:CPU removes it before fusion.
A while loop is a boundary fusion does not cross, so the value is copied through one (two
halves of the leading axis): two copies' worth of memory traffic per call, exact (the
values are moved, never computed). Only XLA:CPU is known to need this (TPU/GPU fusion was
not measured here), so elsewhere `materialize` is the identity and adds nothing to the
graph; so it is on a mesh of several CPU devices (the loop would slice a sharded axis).
"""
from __future__ import annotations

import jax
from jax import lax

from flip_jax.models.target import on_one_cpu


def copy_through_loop(x):
  """x, copied through a `lax.fori_loop` over its leading axis in two (or more) equal
  parts. A trip count of one would be inlined (XLA's while-loop simplifier), and so would
  a body that returns its carry unchanged; few trips keep the loop's overhead nil."""
  n = x.shape[0]
  if n < 2:
    return x
  size = next(d for d in range(n // 2, 0, -1) if n % d == 0)  # largest proper divisor

  def part(i, acc):
    return lax.dynamic_update_slice_in_dim(acc, lax.dynamic_slice_in_dim(x, i * size, size),
                                           i * size, 0)
  return lax.fori_loop(0, n // size, part, x)


@jax.custom_vjp
def _materialized(x):
  return copy_through_loop(x)


def _fwd(x):
  return copy_through_loop(x), None


def _bwd(_, g):
  return (copy_through_loop(g),)


_materialized.defvjp(_fwd, _bwd)


def materialize(x):
  """x (same value); on one CPU device (`on_one_cpu`) written to memory in the forward
  and the backward pass (see the module doc)."""
  if x.ndim == 0 or x.shape[0] < 2 or not on_one_cpu():
    return x
  return _materialized(x)
