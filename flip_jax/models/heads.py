"""Heads that sit on top of an encoder: projections, attention pooling (MAP, CaiT class
attention) and MLP projector/predictor heads."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flip_jax.models.layers import ACTIVATIONS, Attention, Dense, LayerNorm, Mlp, param


def projection(d_in: int, d_out: int, *, rngs, dtype=jnp.float32) -> Dense:
  """Bias-free linear projection into a shared embedding space (CLIP/FLIP)."""
  return Dense((d_in,), (d_out,), ("embed",), ("mlp",), rngs=rngs, use_bias=False, dtype=dtype)


class AttentionPool(nnx.Module):
  """Multihead attention pooling (big_vision 'map'): a learned probe attends to the tokens."""

  def __init__(self, width, heads, mlp_dim, *, rngs, dtype=jnp.float32, ln_eps=1e-6,
               attn_impl=None):
    self.probe = param(rngs, jax.nn.initializers.xavier_uniform(), (1, width), (None, "embed"))
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype, impl=attn_impl)
    self.ln = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0],) + self.probe.shape)
    y = self.attn(probe, x)
    y = y + self.mlp(self.ln(y))
    return y[:, 0]


class ClassAttentionBlock(nnx.Module):
  """CaiT class attention: the class token attends to [cls; tokens] and only it is updated,
  each residual branch scaled by a learned per-channel layer scale."""

  def __init__(self, width, heads, mlp_dim, *, rngs, layer_scale=0.1, act="gelu", ln_eps=1e-6,
               dtype=jnp.float32, attn_impl=None):
    self.ln1 = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype, impl=attn_impl)
    self.ln2 = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.mlp = Mlp(width, mlp_dim, rngs=rngs, act=act, dtype=dtype)
    scale = jax.nn.initializers.constant(layer_scale)
    self.layer_scale_attn = param(rngs, scale, (width,), ("embed",))
    self.layer_scale_mlp = param(rngs, scale, (width,), ("embed",))

  def __call__(self, cls, tokens):
    """cls [B, 1, D], tokens [B, T, D] -> the updated cls [B, 1, D]."""
    u = self.ln1(jnp.concatenate([cls, tokens], axis=1))
    cls = cls + self.layer_scale_attn[...].astype(cls.dtype) * self.attn(u[:, :1], u)
    return cls + self.layer_scale_mlp[...].astype(cls.dtype) * self.mlp(self.ln2(cls))


class ClassAttentionPool(nnx.Module):
  """A learned class token refined by `depth` class-attention blocks over the encoder's
  tokens, then LayerNorm: one instance vector per sequence (CaiT / ExtreMA)."""

  def __init__(self, width, heads, mlp_dim, *, rngs, depth=2, layer_scale=0.1, act="gelu",
               ln_eps=1e-6, dtype=jnp.float32, attn_impl=None):
    self.cls_token = param(rngs, jax.nn.initializers.normal(0.02), (width,), ("embed",))
    self.blocks = nnx.List([
        ClassAttentionBlock(width, heads, mlp_dim, rngs=rngs, layer_scale=layer_scale, act=act,
                            ln_eps=ln_eps, dtype=dtype, attn_impl=attn_impl)
        for _ in range(depth)])
    self.ln = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)

  def __call__(self, tokens, *, norm: bool = True):
    """tokens [B, T, D] -> [B, D]; norm=False leaves out the final LayerNorm (what
    ExtreMA's linear evaluation reads)."""
    cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype),
                           (tokens.shape[0], 1, tokens.shape[-1]))
    for block in self.blocks:
      cls = block(cls, tokens)
    return (self.ln(cls) if norm else cls)[:, 0]


class MlpHead(nnx.Module):
  """`num_layers` Dense layers with LayerNorm + GELU between them (BYOL/MoCo v3 projector
  and predictor); xavier-uniform kernels, zero biases.

  Kernels alternate embed->mlp and mlp->embed logical axes (column- then row-parallel),
  so a hidden x hidden kernel is split over both the tensor and the fsdp mesh axes.
  """

  def __init__(self, d_in, hidden, d_out, *, rngs, num_layers, ln_eps=1e-5, act="gelu",
               dtype=jnp.float32):
    """ln_eps: torch's LayerNorm default, which the BYOL / MoCo v3 / ExtreMA heads use."""
    if num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dims = [d_in] + [hidden] * (num_layers - 1) + [d_out]
    axes = ("embed", "mlp")
    self.act = ACTIVATIONS[act]
    self.layers = nnx.List([
        Dense((dims[i],), (dims[i + 1],), (axes[i % 2],), (axes[(i + 1) % 2],), rngs=rngs,
              dtype=dtype) for i in range(num_layers)])
    self.norms = nnx.List([LayerNorm(hidden, rngs=rngs, eps=ln_eps, dtype=dtype)
                           for _ in range(num_layers - 1)])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.norms):
        x = self.act(self.norms[i](x))
    return x
