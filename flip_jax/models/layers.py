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
from jax.ad_checkpoint import checkpoint_name

from flip_jax import sharding
from flip_jax.models import attention, dense_matmul, materialize
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
    y = dense_matmul.matmul(x.astype(self.dtype), k, self.n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 (bf16 statistics drift), output in the compute dtype."""

  def __init__(self, width: int, *, rngs, eps: float = 1e-6, dtype=jnp.float32):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, jax.nn.initializers.ones, (width,), ("embed",))
    self.bias = param(rngs, jax.nn.initializers.zeros, (width,), ("embed",))

  @jax.named_scope("layer_norm")  # the step profile's 'norm' (flip_jax/step_profile.py)
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
    # Named for the remat policies (REMAT_POLICIES) that save them.
    q = checkpoint_name(self.q(x), "query_proj")
    k = checkpoint_name(self.k(kv), "key_proj")
    v = checkpoint_name(self.v(kv), "value_proj")
    out = self.out(attention.attend(self.impl, q, k, v, mask=mask, causal=causal))
    return checkpoint_name(out, "out_proj")


class Mlp(nnx.Module):
  def __init__(self, width: int, mlp_dim: int, *, rngs, act: str = "gelu", dtype=jnp.float32,
               fc1_init=xavier, fc2_init=xavier):
    self.act = ACTIVATIONS[act]
    self.fc1 = Dense((width,), (mlp_dim,), ("embed",), ("mlp",), rngs=rngs, dtype=dtype,
                     init=fc1_init)
    self.fc2 = Dense((mlp_dim,), (width,), ("mlp",), ("embed",), rngs=rngs, dtype=dtype,
                     init=fc2_init)

  def __call__(self, x):
    h = checkpoint_name(self.fc1(x), "mlp_hidden")
    with jax.named_scope("mlp_activation"):  # the step profile's 'activation'
      h = self.act(h)
    h = sharding.constrain(h, ("batch", "length", "mlp"))
    return self.fc2(h)


def drop_path(x, rate, rng):
  """Stochastic depth: zero a whole residual branch per sample, rescale the survivors.

  `rate` is a float, or a traced scalar (a scanned layer's entry of the per-layer rates)."""
  if rng is None or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


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

  def __call__(self, x, rng=None, *, mask=None, causal=False, drop_path_rate=None):
    """drop_path_rate: overrides the block's own (a scanned layer's traced rate)."""
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    x = x + drop_path(self.attn(self.ln1(x), mask=mask, causal=causal), rate, r1)
    x = x + drop_path(self.mlp(self.ln2(x)), rate, r2)
    return sharding.constrain(x, ("batch", "length", "embed"))


# What the backward pass keeps of a block's forward (the rest is recomputed).
REMAT_POLICIES = {
    "none": None,  # keep everything: no rematerialization
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "dots": jax.checkpoint_policies.checkpoint_dots,  # every matmul output, attention's too
    # projections and MLP matmuls only, not the batched attention dots (the official
    # FLIP code's "minimal" remat)
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    # Named matmul outputs only (tagged in Attention and Mlp): between "full" and
    # "dots_no_batch" in memory and in recompute. Each saved value spares recomputing
    # its matmul, 2 x that matmul's input width FLOPs per element.
    "qkv_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj"),
    "qkv_out_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "out_proj"),
    "mlp_hidden": jax.checkpoint_policies.save_only_these_names("mlp_hidden"),
}


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")


def layer_keys(rng, indices):
  """Keys fold_in(rng, i), the ones an unrolled loop draws, for an array of layer `indices`
  (in its shape); None without an rng."""
  if rng is None:
    return None
  indices = jnp.asarray(indices, jnp.uint32)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices.reshape(-1))
  return keys.reshape(indices.shape + keys.shape[1:])


def _stacked_state(modules: Sequence):
  return jax.tree.map(lambda *p: jnp.stack(p), *[nnx.state(m) for m in modules])


def stack_modules(modules: Sequence) -> nnx.Module:
  """One module of modules[0]'s structure whose params are the modules' params stacked on
  a leading axis, named `sharding.LAYERS` in their `axes` metadata (no rule shards it).
  Static attributes come from modules[0]."""
  stacked = nnx.merge(nnx.graphdef(modules[0]), _stacked_state(modules))
  for _, v in nnx.iter_graph(stacked):
    if isinstance(v, nnx.Variable) and v.has_metadata("axes"):
      v.set_metadata(axes=(sharding.LAYERS,) + tuple(v.get_metadata()["axes"]))
  return stacked


class Stacked(nnx.Module):
  """Layers of one structure stored as one module with stacked params, run by `scan`.

  Its params are named '<...>/stacked/<param>' with the layer index as their leading
  axis; `trees.unstack` names them as an unrolled list does ('<...>/<i>/<param>'), which
  is the layout checkpoints are read in (see `trees.fill`), so a scanned and an unrolled
  model load each other's weights. Stored stacked, the optimizer, the gradient and the
  FSDP gathers see one array per kind of param instead of one per layer, so the compiled
  step shrinks with depth."""

  def __init__(self, layers: Sequence):
    self.depth = len(layers)
    self.stacked = stack_modules(layers)

  def scan(self, x, apply: Callable, xs=None, *, remat: str = "none"):
    """x = apply(layer i, x, xs[i]) for i = 0 .. depth-1 as one `jax.lax.scan`."""
    return scan_stacked(self.stacked, x, apply, xs, remat=remat)


def _scan(graphdef, stacked_state, x, apply, xs, remat):
  def step(h, inputs):
    state, extra = inputs
    return apply(nnx.merge(graphdef, state), h, extra), None

  if remat != "none":
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
  return jax.lax.scan(step, x, (stacked_state, xs))[0]


def scan_stacked(stacked: nnx.Module, x, apply: Callable, xs=None, *, remat: str = "none"):
  """x = apply(layer i, x, xs[i]) over a module of stacked layers (`stack_modules`) as one
  `jax.lax.scan`. Static attributes come from the first layer: what differs between
  layers (drop-path rates, RNG keys) travels in `xs`. `remat` names a REMAT_POLICIES
  entry applied to each step."""
  return _scan(*nnx.split(stacked), x, apply, xs, remat)


class Encoder(nnx.Module):
  """A stack of blocks; drop-path grows linearly with depth (0 at the first block).
  inits: the blocks' kernel initialisers; depth_rescale: EVA's fix_init_weight on top.

  scan=True stores the blocks stacked and runs them as one `jax.lax.scan` (see `Stacked`):
  the same outputs and gradients and, read through `trees.fill`, the same weights as
  unrolled; one compiled block instead of `depth`."""

  def __init__(self, depth, width, heads, mlp_dim, *, rngs, act="gelu", drop_path=0.0,
               ln_eps=1e-6, dtype=jnp.float32, remat="none", attn_impl=None,
               inits: BlockInits = BlockInits(), depth_rescale: bool = False, scan=False):
    check_remat(remat)
    self.remat, self.scan = remat, scan
    self.rates = tuple(drop_path * i / max(depth - 1, 1) for i in range(depth))
    blocks = [Block(width, heads, mlp_dim, rngs=rngs, act=act, drop_path=r, ln_eps=ln_eps,
                    dtype=dtype, attn_impl=attn_impl,
                    inits=block_inits(inits, i, depth_rescale))
              for i, r in enumerate(self.rates)]
    # Built unrolled either way, so a seed gives the same weights scanned or not.
    self.blocks = Stacked(blocks) if scan else nnx.List(blocks)

  def __call__(self, x, rng=None, *, mask=None, causal=False):
    if self.scan:
      return self._scanned(x, rng, mask=mask, causal=causal)
    for i, block in enumerate(self.blocks):
      r = jax.random.fold_in(rng, i) if rng is not None else None
      if self.remat == "none":
        x = block(x, r, mask=mask, causal=causal)
      else:
        x = nnx.remat(lambda b, h, k: b(h, k, mask=mask, causal=causal),
                      policy=REMAT_POLICIES[self.remat])(block, x, r)
      # The residual stream and its gradient in memory between blocks on CPU (a scan's
      # carry already is): no O(depth²) recomputation, see models/materialize.py.
      x = materialize.materialize(x)
    return x

  def _scanned(self, x, rng, *, mask, causal):
    # Per-layer rates enter the scan only when some are non-zero (and a key asks for it).
    rates = (jnp.asarray(self.rates, jnp.float32) if rng is not None and any(self.rates)
             else None)
    keys = layer_keys(rng, range(len(self.rates)))

    def apply(block, h, inputs):
      key, rate = inputs
      return block(h, key, mask=mask, causal=causal, drop_path_rate=rate)

    return self.blocks.scan(x, apply, (keys, rates), remat=self.remat)


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
  """Forward matmul FLOPs of one sequence through `depth` blocks (2 per multiply-add)."""
  per_token = 2 * (4 * width * width + 2 * width * mlp_dim)  # qkv+out, fc1+fc2
  attention = 2 * 2 * tokens * tokens * width  # q@k^T and attn@v
  return depth * (tokens * per_token + attention)
