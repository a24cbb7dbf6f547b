"""Heads that sit on top of an encoder: projections and attention pooling."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flip_jax.models.layers import Attention, Dense, LayerNorm, Mlp, param


def projection(d_in: int, d_out: int, *, rngs, dtype=jnp.float32) -> Dense:
  """Bias-free linear projection into a shared embedding space (CLIP/FLIP)."""
  return Dense((d_in,), (d_out,), ("embed",), ("mlp",), rngs=rngs, use_bias=False, dtype=dtype)


class AttentionPool(nnx.Module):
  """Multihead attention pooling (big_vision 'map'): a learned probe attends to the tokens."""

  def __init__(self, width, heads, mlp_dim, *, rngs, dtype=jnp.float32, ln_eps=1e-6):
    self.probe = param(rngs, jax.nn.initializers.xavier_uniform(), (1, width), (None, "embed"))
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
    self.ln = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0],) + self.probe.shape)
    y = self.attn(probe, x)
    y = y + self.mlp(self.ln(y))
    return y[:, 0]
