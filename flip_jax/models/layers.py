"""Transformer parts shared by every tower: params with logical axis names, LN, MHA, MLP, blocks.

Params are float32 and carry `axes` metadata (logical names such as 'embed', 'mlp',
'heads') that `flip_jax.sharding` maps onto the mesh; computation runs in `dtype`
(bfloat16 on accelerators). Stochastic parts take an explicit `rng` key, so a model
call is a pure function of (params, inputs, rng).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flip_jax import sharding
from flip_jax.models import attention
from flip_jax.models.inits import BlockInits, block_inits

ACTIVATIONS: dict[str, Callable] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}

xavier = jax.nn.initializers.xavier_uniform()


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter tagged with one logical axis name per dimension."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), axes=tuple(axes))


class Dense(nnx.Module):
  """y = x @ kernel (+ bias); the kernel may be n-D (e.g. embed -> heads x kv)."""

  def __init__(self, in_shape, out_shape, in_axes, out_axes, *, rngs, use_bias=True,
               init=xavier, dtype=jnp.float32):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    self.n_in = len(in_shape)
    self.dtype = dtype
    fan_in = 1
    for d in in_shape:
      fan_in *= d
    fan_out = 1
    for d in out_shape:
      fan_out *= d
    # Initialise as the equivalent 2-D matrix so fan-in/out follow the flattened shape.
    flat = init(rngs.params(), (fan_in, fan_out), jnp.float32)
    self.kernel = nnx.Param(flat.reshape(in_shape + out_shape), axes=tuple(in_axes) + tuple(out_axes))
    self.bias = (param(rngs, jax.nn.initializers.zeros, out_shape, out_axes)
                 if use_bias else None)

  def __call__(self, x):
    k = self.kernel[...].astype(self.dtype)
    axes = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), k, (axes, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 (bf16 statistics drift), output in the compute dtype."""

  def __init__(self, width: int, *, rngs, eps: float = 1e-6, dtype=jnp.float32):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, jax.nn.initializers.ones, (width,), ("embed",))
    self.bias = param(rngs, jax.nn.initializers.zeros, (width,), ("embed",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v projections (maps 1:1 onto HF/open_clip).

  impl: 'xla' | 'cudnn' | 'auto' (cuDNN flash attention where it applies, see
  flip_jax/models/attention.py); None = 'auto'."""

  def __init__(self, width: int, heads: int, *, rngs, dtype=jnp.float32, impl: str | None = None,
               kv_width: int | None = None, qkv_init=xavier, out_init=xavier):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    impl = impl or "auto"
    if impl not in attention.IMPLS:
      raise ValueError(f"attention implementation must be one of {attention.IMPLS}, "
                       f"got {impl!r}")
    hd = width // heads
    kv_width = kv_width or width
    self.heads, self.impl, self.dtype = heads, impl, dtype
    mk = functools.partial(Dense, rngs=rngs, dtype=dtype, init=qkv_init)
    self.q = mk((width,), (heads, hd), ("embed",), ("heads", "kv"))
    self.k = mk((kv_width,), (heads, hd), ("embed",), ("heads", "kv"))
    self.v = mk((kv_width,), (heads, hd), ("embed",), ("heads", "kv"))
    self.out = Dense((heads, hd), (width,), ("heads", "kv"), ("embed",), rngs=rngs, dtype=dtype,
                     init=out_init)

  def __call__(self, x, kv=None, *, mask=None, causal=False):
    """x: [B, T, D] queries; kv: [B, S, D] keys/values (default x); mask: [B, 1|H, T, S] bool
    or an attention.KeyPadding."""
    kv = x if kv is None else kv
    q, k, v = self.q(x), self.k(kv), self.v(kv)
    return self.out(attention.attend(self.impl, q, k, v, mask=mask, causal=causal))


class Mlp(nnx.Module):
  def __init__(self, width: int, mlp_dim: int, *, rngs, act: str = "gelu", dtype=jnp.float32,
               fc1_init=xavier, fc2_init=xavier):
    self.act = ACTIVATIONS[act]
    self.fc1 = Dense((width,), (mlp_dim,), ("embed",), ("mlp",), rngs=rngs, dtype=dtype,
                     init=fc1_init)
    self.fc2 = Dense((mlp_dim,), (width,), ("mlp",), ("embed",), rngs=rngs, dtype=dtype,
                     init=fc2_init)

  def __call__(self, x):
    h = self.act(self.fc1(x))
    h = sharding.constrain(h, ("batch", "length", "mlp"))
    return self.fc2(h)


def drop_path(x, rate: float, rng):
  """Stochastic depth: zero a whole residual branch per sample, rescale the survivors."""
  if rate == 0.0 or rng is None:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Block(nnx.Module):
  """Pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

  def __init__(self, width, heads, mlp_dim, *, rngs, act="gelu", drop_path=0.0, ln_eps=1e-6,
               dtype=jnp.float32, attn_impl=None, inits: BlockInits = BlockInits()):
    self.drop_path_rate = drop_path
    self.ln1 = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.attn = Attention(width, heads, rngs=rngs, dtype=dtype, impl=attn_impl,
                          qkv_init=inits.qkv, out_init=inits.out)
    self.ln2 = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)
    self.mlp = Mlp(width, mlp_dim, rngs=rngs, act=act, dtype=dtype, fc1_init=inits.fc1,
                   fc2_init=inits.fc2)

  def __call__(self, x, rng=None, *, mask=None, causal=False):
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    x = x + drop_path(self.attn(self.ln1(x), mask=mask, causal=causal), self.drop_path_rate, r1)
    x = x + drop_path(self.mlp(self.ln2(x)), self.drop_path_rate, r2)
    return sharding.constrain(x, ("batch", "length", "embed"))


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Encoder(nnx.Module):
  """A stack of blocks; drop-path grows linearly with depth (0 at the first block).
  inits: the blocks' kernel initialisers; depth_rescale: EVA's fix_init_weight on top."""

  def __init__(self, depth, width, heads, mlp_dim, *, rngs, act="gelu", drop_path=0.0,
               ln_eps=1e-6, dtype=jnp.float32, remat="none", attn_impl=None,
               inits: BlockInits = BlockInits(), depth_rescale: bool = False):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    self.remat = remat
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    self.blocks = nnx.List([
        Block(width, heads, mlp_dim, rngs=rngs, act=act, drop_path=r, ln_eps=ln_eps,
              dtype=dtype, attn_impl=attn_impl, inits=block_inits(inits, i, depth_rescale))
        for i, r in enumerate(rates)])

  def __call__(self, x, rng=None, *, mask=None, causal=False):
    for i, block in enumerate(self.blocks):
      r = jax.random.fold_in(rng, i) if rng is not None else None
      if self.remat == "none":
        x = block(x, r, mask=mask, causal=causal)
      else:
        x = nnx.remat(lambda b, h, k: b(h, k, mask=mask, causal=causal),
                      policy=REMAT_POLICIES[self.remat])(block, x, r)
    return x


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
  """Forward matmul FLOPs of one sequence through `depth` blocks (2 per multiply-add)."""
  per_token = 2 * (4 * width * width + 2 * width * mlp_dim)  # qkv+out, fc1+fc2
  attention = 2 * 2 * tokens * tokens * width  # q@k^T and attn@v
  return depth * (tokens * per_token + attention)
