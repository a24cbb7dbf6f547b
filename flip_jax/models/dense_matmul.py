"""`matmul(x, kernel, n_in)`: a Dense layer's x · kernel, contracting x's last `n_in`
dims with the kernel's first `n_in`, with a weight gradient XLA:CPU runs at full speed.

The weight gradient of y = x·W is xᵀ·g, a matmul that contracts the token axis, the
major axis of both x [N, in] and g [N, out]. XLA:CPU hands only matmuls whose left
operand contracts its minor axis to its fast kernels (YNNPACK); for xᵀ·g it copies one
operand transposed and calls a generic kernel at about half the speed (ViT-B/16's MLP:
185 ms instead of 110 ms forward+copy at 1 thread), and any transpose we write in jax is
folded back into that same matmul. So on CPU the backward pass computes xᵀ through a
loop (`materialize.copy_through_loop`, which XLA cannot fold) and then xᵀ·g. Forward and
input gradient are the plain dot_general; on TPU/GPU (and on a mesh of several CPU
devices: `target.on_one_cpu`) the whole thing is.
"""
from __future__ import annotations

import math

import jax
from jax import lax

from flip_jax.models.materialize import copy_through_loop
from flip_jax.models.target import on_one_cpu


def _dot2d(a, b, contract_a: int, contract_b: int):
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())))


@jax.custom_vjp
def _matmul2d(x, w):
  """x [N, in] · w [in, out]."""
  return _dot2d(x, w, 1, 0)


def _fwd(x, w):
  return _dot2d(x, w, 1, 0), (x, w)


def _bwd(res, g):
  x, w = res
  dx = _dot2d(g, w, 1, 1)  # g · wᵀ: contracts both minor axes
  dw = _dot2d(copy_through_loop(x.T), g, 1, 0)  # xᵀ [in, N] · g [N, out]
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul2d.defvjp(_fwd, _bwd)


def matmul(x, kernel, n_in: int):
  """x [..., *in] · kernel [*in, *out] -> [..., *out]."""
  if not on_one_cpu():
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return lax.dot_general(x, kernel, (axes, ((), ())))
  lead, ins, outs = x.shape[:x.ndim - n_in], kernel.shape[:n_in], kernel.shape[n_in:]
  y = _matmul2d(x.reshape(math.prod(lead), math.prod(ins)),
                kernel.reshape(math.prod(ins), math.prod(outs)))
  return y.reshape(lead + outs)
