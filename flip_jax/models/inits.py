"""Named initialisation schemes of a transformer tower (`config.model.{image,text}.init`).

A scheme gives the kernel initialisers of every block (q/k/v, attention output, MLP), of
the patch embedding, and of the tokens and learned position embeddings; biases are zero
and LayerNorms start at (1, 0) in every scheme.

- 'default': xavier-uniform kernels (each of q, k, v on its own [D, D] matrix), LeCun-normal
  patch embedding, class token N(0, 1e-6), mask token and learned positions N(0, 0.02)
  (text positions N(0, 0.01)).
- 'flip': the official FLIP/MAE JAX code (`models_flip.py`, INIT_VER 'mae_jax_v2'): q, k, v
  `variance_scaling(0.5, 'fan_avg', 'uniform')` (the xavier-uniform of PyTorch's fused
  [D, 3D] qkv matrix, which ExtreMA's `vits.py` uses), output and MLP xavier-uniform, the
  patch kernel xavier-uniform as the flattened [p*p*3, D] matrix
  (`initializers_util.patch_kernel`), class token, mask token and learned positions (text
  included) N(0, 0.02).
- 'beit': BEiT/EVA-01 pre-training (`beit/modeling_pretrain.py`): every Linear and the patch
  Conv, the tokens and the learned positions trunc-normal with `init_std`, cut at one
  standard deviation as BEiT's `trunc_normal_(a=-std, b=std)` does; then `fix_init_weight`
  divides block i's attention-output and fc2 kernels by sqrt(2 (i + 1)).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

xavier = jax.nn.initializers.xavier_uniform()


class BlockInits(NamedTuple):
  """Kernel initialisers of one transformer block's layers."""
  qkv: Callable = xavier
  out: Callable = xavier
  fc1: Callable = xavier
  fc2: Callable = xavier


class TowerInits(NamedTuple):
  block: BlockInits
  patch: Callable      # the patch embedding kernel (initialised as its flattened 2-D matrix)
  cls: Callable        # class token
  mask: Callable       # mask token
  pos: Callable        # learned image position embedding
  text_pos: Callable   # learned text position embedding
  depth_rescale: bool  # divide block i's out and fc2 kernels by sqrt(2 (i + 1))


def scaled(init: Callable, factor: float) -> Callable:
  def f(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * jnp.asarray(factor, dtype)
  return f


def trunc_normal_1sd(std: float) -> Callable:
  """N(0, std^2) truncated to [-std, std] (not rescaled): torch's trunc_normal_(std=std,
  a=-std, b=std), as BEiT and EVA-01 call it."""
  def f(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -1.0, 1.0, shape, dtype) * jnp.asarray(std, dtype)
  return f


def block_inits(base: BlockInits, layer: int, depth_rescale: bool) -> BlockInits:
  """Block `layer`'s (0-based) initialisers, depth-rescaled as EVA's fix_init_weight."""
  if not depth_rescale:
    return base
  factor = 1.0 / math.sqrt(2.0 * (layer + 1))
  return base._replace(out=scaled(base.out, factor), fc2=scaled(base.fc2, factor))


def _default(init_std: float) -> TowerInits:
  del init_std
  normal = jax.nn.initializers.normal
  return TowerInits(BlockInits(), jax.nn.initializers.lecun_normal(), normal(1e-6),
                    normal(0.02), normal(0.02), normal(0.01), False)


def _flip(init_std: float) -> TowerInits:
  del init_std
  normal = jax.nn.initializers.normal(0.02)
  qkv = jax.nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
  return TowerInits(BlockInits(qkv=qkv), xavier, normal, normal, normal, normal, False)


def _beit(init_std: float) -> TowerInits:
  t = trunc_normal_1sd(init_std)
  return TowerInits(BlockInits(t, t, t, t), t, t, t, t, t, True)


SCHEMES: dict[str, Callable[[float], TowerInits]] = {
    "default": _default, "flip": _flip, "beit": _beit}


def scheme(name: str, init_std: float = 0.02) -> TowerInits:
  if name not in SCHEMES:
    raise ValueError(f"init must be one of {tuple(SCHEMES)}, got {name!r}")
  return SCHEMES[name](init_std)
