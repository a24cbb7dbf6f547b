"""Swin Transformer V2 (Liu et al., "Swin Transformer V2: Scaling Up Capacity and
Resolution", CVPR 2022): the hierarchical encoder of SimMIM and the data-scaling study.

Four stages of windowed self-attention; every second block shifts its windows by half a
window (cyclic roll + a mask so tokens only attend within the region they came from);
patch merging halves the grid and doubles the width between stages. V2's changes over V1:
scaled cosine attention (a learned per-head temperature, clamped at 1/0.01), a continuous
relative position bias (a 2-layer MLP on log-spaced relative coordinates, 16*sigmoid) and
res-post-norm (LN on the residual branch's output, initialised to zero so each block
starts as the identity).

Tokens live as [B, L, C] between blocks (row-major grid); window attention reshapes to
[B, H, W, C] locally. The boolean `mask` path replaces masked patch embeddings by a learned
token (SimMIM). Params carry logical axis names ('embed', 'mlp', 'heads', 'kv').
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flip_jax import sharding, trees
from flip_jax.models.layers import (REMAT_POLICIES, Dense, LayerNorm, Mlp, check_remat, drop_path,
                                   layer_keys, param, scan_stacked, stack_modules)
from flip_jax.models.vit import patchify

# name -> (embed_dim C of stage 1, depths, heads): SwinV2 paper's model table (head dim 32);
# 'g' is the 1B model of the data-scaling paper (C=448, ~1.0B params).
VARIANTS = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "L": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
    "H": (352, (2, 2, 18, 2), (11, 22, 44, 88)),
    "g": (448, (2, 2, 18, 2), (14, 28, 56, 112)),
    "G": (512, (2, 2, 42, 4), (16, 32, 64, 128)),
}
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
CPB_HIDDEN = 512  # width of the relative-position-bias MLP


def resolve_variant(variant: str, embed_dim: int = 0, depths: Sequence[int] = (),
                    heads: Sequence[int] = ()) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
  """(embed_dim, depths, heads): the variant's, each overridable; 'custom' needs all three."""
  if variant != "custom" and variant not in VARIANTS:
    raise ValueError(f"unknown SwinV2 variant {variant!r}: expected one of "
                     f"{sorted(VARIANTS)} or 'custom'")
  base = VARIANTS.get(variant, (0, (), ()))
  embed_dim = embed_dim or base[0]
  depths = tuple(depths) or base[1]
  heads = tuple(heads) or base[2]
  if not (embed_dim and depths and heads):
    raise ValueError("a 'custom' SwinV2 needs embed_dim, depths and heads")
  if len(depths) != len(heads):
    raise ValueError(f"SwinV2 depths {depths} and heads {heads} differ in length")
  return embed_dim, depths, heads


def stage_windows(image_size: int, patch: int, window: int, num_stages: int
                  ) -> list[tuple[int, int, int]]:
  """(grid side, window, shift) per stage, as the official code derives them: a stage whose
  grid is no larger than the window attends globally (window = grid, no shift). Raises
  ValueError naming the first size that does not divide."""
  if image_size % patch:
    raise ValueError(f"image size {image_size} is not divisible by the patch size {patch}")
  out, res = [], image_size // patch
  for s in range(num_stages):
    w, shift = (res, 0) if res <= window else (window, window // 2)
    if res % w:
      raise ValueError(f"stage {s + 1}: a {res}x{res} grid (image {image_size} / patch {patch}"
                       f" / 2^{s}) is not divisible by the window {window}")
    out.append((res, w, shift))
    if s < num_stages - 1:
      if res % 2:
        raise ValueError(f"stage {s + 1}: a {res}x{res} grid cannot be merged 2x2 (image "
                         f"{image_size} must be divisible by patch {patch} x 2^"
                         f"{num_stages - 1})")
      res //= 2
  return out


# ------------------------------------------------------------------ window geometry

def window_partition(x, window: int):
  """[B, H, W, C] -> [B, nW, window*window, C]; windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_reverse(windows, window: int, height: int, width: int):
  """Inverse of `window_partition`: [B, nW, window*window, C] -> [B, H, W, C]."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


@functools.lru_cache(maxsize=None)
def shift_attention_mask(res: int, window: int, shift: int) -> np.ndarray:
  """bool [nW, T, T]: may query attend to key, for windows of the grid rolled by -shift.

  Rolling wraps the last `shift` rows/columns to the front of the grid; a window that
  straddles the seam holds tokens that are not neighbours in the image. Labelling the
  three bands per axis (before the last window, the last window's unwrapped part, the
  wrapped part) and allowing only equal labels keeps attention within each region.
  """
  labels = np.zeros((res, res), np.int32)
  bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None)) if shift else (
      slice(None),)
  for i, rows in enumerate(bands):
    for j, cols in enumerate(bands):
      labels[rows, cols] = i * 3 + j
  lw = np.asarray(window_partition(labels[None, :, :, None], window))[0, :, :, 0]
  return lw[:, :, None] == lw[:, None, :]


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """int [T, T]: row of the (2w-1)^2 relative-coordinate table for each (query, key)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # 2, T, T in [0, 2w-2]
  return rel[0] * (2 * window - 1) + rel[1]


@functools.lru_cache(maxsize=None)
def relative_coords_table(window: int, pretrained_window: int = 0) -> np.ndarray:
  """float32 [(2w-1)^2, 2]: (dy, dx) scaled to [-8, 8] by the (pre-training) window, then
  log-spaced: sign(t) * log2(1 + |t|) / log2(8). A window enlarged at fine-tuning keeps the
  pre-training scale, so the bias MLP extrapolates instead of seeing new inputs."""
  d = np.arange(-(window - 1), window, dtype=np.float64)
  table = np.stack(np.meshgrid(d, d, indexing="ij"), axis=-1).reshape(-1, 2)
  norm = (pretrained_window or window) - 1
  if norm > 0:
    table = table / norm * 8.0
  return (np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)).astype(np.float32)


# ------------------------------------------------------------------ modules

class WindowAttention(nnx.Module):
  """Scaled cosine attention within windows plus the continuous relative position bias."""

  def __init__(self, dim: int, heads: int, window: int, *, rngs, pretrained_window: int = 0,
               dtype=jnp.float32):
    if dim % heads:
      raise ValueError(f"SwinV2 width {dim} is not divisible by heads {heads}")
    hd = dim // heads
    self.heads, self.window, self.pretrained_window, self.dtype = (
        heads, window, pretrained_window, dtype)
    mk = functools.partial(Dense, rngs=rngs, dtype=dtype)
    # As in the official code: q and v have a bias, k has none (softmax ignores it anyway).
    self.q = mk((dim,), (heads, hd), ("embed",), ("heads", "kv"))
    self.k = mk((dim,), (heads, hd), ("embed",), ("heads", "kv"), use_bias=False)
    self.v = mk((dim,), (heads, hd), ("embed",), ("heads", "kv"))
    self.out = mk((heads, hd), (dim,), ("heads", "kv"), ("embed",))
    self.logit_scale = param(rngs, jax.nn.initializers.constant(math.log(10.0)), (heads,),
                             ("heads",))
    self.cpb_fc1 = Dense((2,), (CPB_HIDDEN,), (None,), ("mlp",), rngs=rngs)
    self.cpb_fc2 = Dense((CPB_HIDDEN,), (heads,), ("mlp",), ("heads",), rngs=rngs,
                         use_bias=False)

  def relative_bias(self):
    """float32 [heads, T, T] = 16 * sigmoid(MLP(log-spaced relative coordinates))."""
    table = jnp.asarray(relative_coords_table(self.window, self.pretrained_window))
    per_offset = self.cpb_fc2(jax.nn.relu(self.cpb_fc1(table)))  # [(2w-1)^2, heads]
    bias = per_offset[relative_position_index(self.window)]  # [T, T, heads]
    return 16.0 * jax.nn.sigmoid(bias.transpose(2, 0, 1))

  def __call__(self, x, allowed=None):
    """x [B, nW, T, C]; allowed bool [nW, T, T] or None."""
    q, k, v = self.q(x), self.k(x), self.v(x)  # [B, nW, T, heads, hd]

    def unit(t):
      t = t.astype(jnp.float32)
      return t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)

    scale = jnp.exp(jnp.minimum(self.logit_scale[...], MAX_LOGIT_SCALE))
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", unit(q), unit(k))
    logits = logits * scale[:, None, None] + self.relative_bias()
    if allowed is not None:
      logits = jnp.where(jnp.asarray(allowed)[None, :, None], logits, -1e9)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return self.out(jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v.astype(self.dtype)))


class SwinBlock(nnx.Module):
  """(Shifted-)window attention and MLP, each with res-post-norm: x + LN(f(x))."""

  def __init__(self, dim, heads, res, window, shift, *, rngs, mlp_ratio=4.0, drop_path=0.0,
               pretrained_window=0, dtype=jnp.float32):
    self.res, self.window, self.shift, self.drop_path_rate = res, window, shift, drop_path
    self.attn = WindowAttention(dim, heads, window, rngs=rngs,
                                pretrained_window=pretrained_window, dtype=dtype)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
    self.norm1 = _zero_layer_norm(dim, rngs, dtype)
    self.norm2 = _zero_layer_norm(dim, rngs, dtype)

  def __call__(self, x, rng=None, *, drop_path_rate=None):
    """x [B, res*res, C] -> same shape. drop_path_rate: overrides the block's own."""
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    b, _, c = x.shape
    r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
    h = x.reshape(b, self.res, self.res, c)
    if self.shift:
      h = jnp.roll(h, (-self.shift, -self.shift), axis=(1, 2))
    allowed = (shift_attention_mask(self.res, self.window, self.shift) if self.shift
               else None)
    h = self.attn(window_partition(h, self.window), allowed)
    h = window_reverse(h, self.window, self.res, self.res)
    if self.shift:
      h = jnp.roll(h, (self.shift, self.shift), axis=(1, 2))
    x = x + drop_path(self.norm1(h.reshape(b, -1, c)), rate, r1)
    x = x + drop_path(self.norm2(self.mlp(x)), rate, r2)
    return sharding.constrain(x, ("batch", "length", "embed"))


def _zero_layer_norm(dim, rngs, dtype):
  """Res-post-norm LN with scale 0: the block starts as the identity (official init)."""
  ln = LayerNorm(dim, rngs=rngs, eps=1e-5, dtype=dtype)
  ln.scale = param(rngs, jax.nn.initializers.zeros, (dim,), ("embed",))
  return ln


class PatchMerging(nnx.Module):
  """2x2 neighbours concatenated (4C) -> linear to 2C -> LN (V2: the norm comes after)."""

  def __init__(self, dim, res, *, rngs, dtype=jnp.float32):
    self.res = res
    self.reduction = Dense((4 * dim,), (2 * dim,), ("embed",), ("embed",), rngs=rngs,
                           use_bias=False, dtype=dtype)
    self.norm = LayerNorm(2 * dim, rngs=rngs, eps=1e-5, dtype=dtype)

  def __call__(self, x):
    b, _, c = x.shape
    h = self.res // 2
    x = x.reshape(b, h, 2, h, 2, c)  # [B, h, dy, w, dx, C]
    # Concatenation order (dy, dx) = (0,0), (1,0), (0,1), (1,1), as the official code.
    x = x.transpose(0, 1, 3, 4, 2, 5).reshape(b, h * h, 4 * c)
    return self.norm(self.reduction(x))


class SwinTransformerV2(nnx.Module):

  def __init__(self, *, image_size: int, variant: str = "B", embed_dim: int = 0,
               depths: Sequence[int] = (), heads: Sequence[int] = (), patch: int = 4,
               window: int = 12, pretrained_windows: Sequence[int] = (),
               mlp_ratio: float = 4.0, drop_path: float = 0.0, remat: str = "none",
               scan: bool = False, mask_token: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """pretrained_windows: per stage, the window the bias MLP was trained with (fine-tuning
    at a larger window); () = each stage's own window. scan: a stage of 4 or more blocks
    stores its (plain, shifted-window) pairs stacked, 'blocks/stacked_<first>_2/<0|1>/...'
    (see flip_jax.trees; an odd last block stays 'blocks/<i>'), and runs them as one
    `jax.lax.scan`. Built unrolled either way, so a seed gives the same weights."""
    embed_dim, depths, heads = resolve_variant(variant, embed_dim, depths, heads)
    check_remat(remat)
    if pretrained_windows and len(pretrained_windows) != len(depths):
      raise ValueError(f"pretrained_windows {tuple(pretrained_windows)} needs one entry per "
                       f"stage ({len(depths)})")
    geometry = stage_windows(image_size, patch, window, len(depths))
    self.patch, self.depths, self.remat, self.dtype = patch, tuple(depths), remat, dtype
    self.scan = scan
    self.grid = image_size // patch
    self.num_patches = self.grid ** 2
    self.num_prefix_tokens = 0
    self.stride = patch * 2 ** (len(depths) - 1)
    self.out_grid = geometry[-1][0]
    self.num_features = embed_dim * 2 ** (len(depths) - 1)
    self.patch_embed = Dense((patch, patch, 3), (embed_dim,), (None, None, None), ("embed",),
                             rngs=rngs, dtype=dtype, init=jax.nn.initializers.lecun_normal())
    self.patch_norm = LayerNorm(embed_dim, rngs=rngs, eps=1e-5, dtype=dtype)
    self.mask_token = (param(rngs, jax.nn.initializers.normal(0.02), (embed_dim,), ("embed",))
                       if mask_token else None)
    total = sum(depths)
    self.rates = rates = tuple(drop_path * i / max(total - 1, 1) for i in range(total))
    blocks, merges, i = [], [], 0
    for s, ((res, w, shift), depth) in enumerate(zip(geometry, depths)):
      dim = embed_dim * 2 ** s
      pre_w = pretrained_windows[s] if pretrained_windows else 0
      for d in range(depth):
        blocks.append(SwinBlock(dim, heads[s], res, w, shift if d % 2 else 0, rngs=rngs,
                                mlp_ratio=mlp_ratio, drop_path=rates[i],
                                pretrained_window=pre_w, dtype=dtype))
        i += 1
      if s < len(depths) - 1:
        merges.append(PatchMerging(dim, res, rngs=rngs, dtype=dtype))
    # One flat list of blocks (global index = depth position, as layer-wise lr decay counts);
    # scanned, each stage's pairs are one stacked entry of it.
    self.blocks = nnx.Dict(self._stored(blocks)) if scan else nnx.List(blocks)
    self.merges = nnx.List(merges)
    self.norm = LayerNorm(self.num_features, rngs=rngs, eps=1e-5, dtype=dtype)

  def __call__(self, images, *, mask=None, rng=None):
    """images [B, H, W, 3] (normalised) -> dict(tokens [B, L', C'], pooled [B, C']).

    mask [B, L] bool on the patch grid: True patches are replaced by the mask token.
    rng: drop-path key; None = deterministic. L' = out_grid**2, C' = num_features.
    """
    x = self.patch_norm(self.patch_embed(patchify(images.astype(self.dtype), self.patch)))
    if mask is not None:
      if self.mask_token is None:
        raise ValueError("a boolean mask needs mask_token=True in the model config")
      x = jnp.where(mask[..., None], self.mask_token[...].astype(self.dtype), x)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    i = 0
    for s, depth in enumerate(self.depths):
      pairs = self._pairs(depth)
      if pairs:
        x = self._scanned_pairs(i, pairs, x, rng)
      for j in range(i + 2 * pairs, i + depth):
        block = self.blocks[str(j)] if self.scan else self.blocks[j]
        x = self._block(block, x, jax.random.fold_in(rng, j) if rng is not None else None)
      i += depth
      if s < len(self.depths) - 1:
        x = self.merges[s](x)
    x = self.norm(x)
    return {"tokens": x, "pooled": x.mean(axis=1)}

  def _block(self, block, x, rng):
    if self.remat == "none":
      return block(x, rng)
    return nnx.remat(lambda b, h, k: b(h, k), policy=REMAT_POLICIES[self.remat])(block, x, rng)

  def _pairs(self, depth: int) -> int:
    """(plain, shifted) pairs of a stage that run scanned: none below 4 blocks."""
    return depth // 2 if self.scan and depth >= 4 else 0

  def _stored(self, blocks) -> dict:
    """The scanned layout: each stage's pairs stacked under 'stacked_<first>_2', the other
    blocks under their index."""
    stored, i = {}, 0
    for depth in self.depths:
      pairs = self._pairs(depth)
      if pairs:
        stored[trees.group_key(i, 2)] = stack_modules(
            [nnx.List(blocks[i + 2 * p:i + 2 * p + 2]) for p in range(pairs)])
      stored.update({str(j): blocks[j] for j in range(i + 2 * pairs, i + depth)})
      i += depth
    return stored

  def _scanned_pairs(self, first: int, pairs: int, x, rng):
    """Blocks first .. first + 2*pairs - 1 of a stage as a scan over its stacked (plain,
    shifted) pairs (the two differ in static shift, so a pair is the unit that repeats)."""
    index = [(first + 2 * p, first + 2 * p + 1) for p in range(pairs)]
    rates = [(self.rates[a], self.rates[b]) for a, b in index]
    rates = (jnp.asarray(rates, jnp.float32) if rng is not None and any(map(any, rates))
             else None)
    keys = layer_keys(rng, index)

    def apply(pair, h, inputs):
      key, rate = inputs
      for k, block in enumerate(pair):
        h = block(h, None if key is None else key[k],
                  drop_path_rate=None if rate is None else rate[k])
      return h

    return scan_stacked(self.blocks[trees.group_key(first, 2)], x, apply, (keys, rates),
                        remat=self.remat)


def layer_id(path: str, depths: Sequence[int]) -> int:
  """Depth of a param for layer-wise lr decay (official SimMIM fine-tuning): 0 for the patch
  embedding and mask token, 1 + global block index for blocks, the last block of its stage
  for a patch merging, sum(depths) + 1 for everything after (final norm, heads)."""
  parts = path.split("/")
  if parts[0] in ("patch_embed", "patch_norm", "mask_token"):
    return 0
  if parts[0] == "blocks":
    return int(parts[1]) + 1
  if parts[0] == "merges":
    return sum(depths[:int(parts[1]) + 1])
  return sum(depths) + 1


def flops(image_size: int, patch: int, window: int, embed_dim: int, depths: Sequence[int],
          mlp_ratio: float = 4.0) -> float:
  """Forward matmul FLOPs of one image (2 per multiply-add): projections, window attention,
  MLPs, patch embedding and merging."""
  total = 2.0 * (image_size // patch) ** 2 * patch * patch * 3 * embed_dim
  for s, ((res, w, _), depth) in enumerate(zip(stage_windows(image_size, patch, window,
                                                             len(depths)), depths)):
    c, n = embed_dim * 2 ** s, res * res
    per_block = 2 * n * (4 * c * c + 2 * c * int(c * mlp_ratio)) + 2 * 2 * n * w * w * c
    total += depth * per_block
    if s < len(depths) - 1:
      total += 2 * (n // 4) * 4 * c * 2 * c
  return total
