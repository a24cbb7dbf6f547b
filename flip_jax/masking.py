"""Masks as pure functions of an RNG key and a shape. Imports nothing of ours.

Conventions: `mask` is bool [B, L] with True = masked (hidden from the student);
`keep_indices` [B, K] are the visible patch positions in a random order;
`ids_restore` [B, L] undoes the shuffle (MAE's layout).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """FLIP/MAE keep exactly int(L * (1 - r)) tokens per sample."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return int(num_patches * (1 - mask_ratio))


def random_keep_indices(rng, batch: int, num_patches: int, mask_ratio: float):
  """Per-sample uniform noise -> argsort -> keep the first int(L(1-r)).

  Returns (keep_indices [B, K] int32, ids_restore [B, L] int32, mask [B, L] bool).
  """
  keep = num_kept(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  keep_indices = ids_shuffle[:, :keep]
  mask = ids_restore >= keep
  return keep_indices, ids_restore, mask


# ------------------------------------------------------------------ block-wise (BEiT/EVA)

def _grid(grid) -> tuple[int, int]:
  return (grid, grid) if isinstance(grid, int) else tuple(grid)


def block_attempt(rng, mask, budget, *, min_block: int, min_aspect: float,
                  max_aspect: float):
  """One try at adding a random rectangle to `mask` (bool [H, W]), as BEiT's generator.

  The target area is uniform in [min_block, budget] (BEiT draws from that range even when
  budget < min_block), the aspect ratio h/w log-uniform in [min_aspect, max_aspect], and
  h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)). The block must fit
  strictly inside the grid (h < H, w < W) and add between 1 and `budget` new patches,
  otherwise the try is rejected. Returns (new mask, patches added (0 = rejected)).
  """
  height, width = mask.shape
  r_area, r_aspect, r_top, r_left = jax.random.split(rng, 4)
  area = min_block + (budget - min_block) * jax.random.uniform(r_area)
  log_aspect = jax.random.uniform(r_aspect, minval=jnp.log(min_aspect),
                                  maxval=jnp.log(max_aspect))
  h = jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area * jnp.exp(-log_aspect))).astype(jnp.int32)
  # randint(0, H - h) inclusive; clipped because h may not fit (then the try is rejected).
  top = jax.random.randint(r_top, (), 0, jnp.maximum(height - h + 1, 1))
  left = jax.random.randint(r_left, (), 0, jnp.maximum(width - w + 1, 1))
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  added = jnp.sum(block & ~mask)
  ok = (h < height) & (w < width) & (added > 0) & (added <= budget)
  return jnp.where(ok, mask | block, mask), jnp.where(ok, added, 0)


def check_block_args(num_patches, num_masked, min_block, max_block, min_aspect, max_aspect,
                     tries) -> None:
  """Raises ValueError, naming the argument, for settings `block_mask` cannot use."""
  if not 0 < num_masked <= num_patches:
    raise ValueError(f"num_masked must be in [1, {num_patches}], got {num_masked}")
  for name, value in (("min_block", min_block), ("max_block", max_block), ("tries", tries)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  if not 0 < min_aspect <= max_aspect:
    raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")


def block_mask(rng, batch: int, grid, num_masked: int, *, min_block: int = 16,
               max_block: int | None = None, min_aspect: float = 0.3,
               max_aspect: float | None = None, tries: int = 10):
  """BEiT/EVA block-wise masks: bool [B, H*W] (row-major), True = masked.

  Per image, rectangles (`block_attempt`) are added while fewer than `num_masked`
  patches are masked, each with a budget of min(num_masked - count, max_block) new
  patches, so the count never exceeds `num_masked`. As in BEiT, generation stops early
  when `tries` consecutive attempts at one block all fail: a mask can then fall short
  of the target. That happens when the few patches still missing cannot be covered by
  a block of about `min_block` patches overlapping the mask. With EVA's 105 of a 16x16
  grid and min_block 16, 34% of masks end 1-10 patches short, 0.56 on average (104.44
  masked), the same distribution as BEiT's NumPy generator (tests/test_masking.py).
  Shortfalls are kept, not topped up with random single patches, which would break the
  block structure; losses average over the masked patches there are.

  Vectorised: one `lax.while_loop` per image under `vmap` (no Python loop per image),
  so it runs inside the jitted train step. Each iteration either adds >= 1 patch or
  counts a failure, so the loop ends after at most num_masked * tries iterations.
  """
  height, width = _grid(grid)
  max_block = num_masked if max_block is None else max_block
  if max_aspect is None:
    max_aspect = 1.0 / min_aspect if min_aspect > 0 else 0.0
  check_block_args(height * width, num_masked, min_block, max_block, min_aspect,
                   max_aspect, tries)

  def one(key):
    def body(state):
      key, mask, count, failures = state
      key, sub = jax.random.split(key)
      budget = jnp.minimum(num_masked - count, max_block)
      mask, added = block_attempt(sub, mask, budget, min_block=min_block,
                                  min_aspect=min_aspect, max_aspect=max_aspect)
      return key, mask, count + added, jnp.where(added > 0, 0, failures + 1)

    def cond(state):
      _, _, count, failures = state
      return (count < num_masked) & (failures < tries)

    init = (key, jnp.zeros((height, width), bool), jnp.int32(0), jnp.int32(0))
    return jax.lax.while_loop(cond, body, init)[1].reshape(-1)

  return jax.vmap(one)(jax.random.split(rng, batch))


def alternate_mask(batch: int, num_patches: int):
  """EVA's fixed validation mask: bool [B, L], True at the even positions of the flattened
  (row-major) patch sequence, as `evaluate_pt` sets `bool_masked_pos[:, 0::2] = 1`. On a grid
  of even width (EVA's 16x16) that is every other column: columns 0, 2, 4, ... masked."""
  return jnp.broadcast_to(jnp.arange(num_patches) % 2 == 0, (batch, num_patches))


# ------------------------------------------------------------------ square grid (SimMIM)

def num_masked_squares(num_squares: int, mask_ratio: float) -> int:
  """SimMIM masks ceil(n * r) squares. The small tolerance keeps float error from rounding
  an exact product up (5 * 0.6 is 3.0000000000000004 in floating point)."""
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
  return min(num_squares, math.ceil(num_squares * mask_ratio - 1e-9))


def square_grid_mask(rng, batch: int, image_size: int, mask_patch: int, model_patch: int,
                     mask_ratio: float):
  """SimMIM: per image, ceil(r * n) of the n (image_size / mask_patch)^2 squares masked at
  random, upsampled to the model's patch grid.

  Returns bool [B, (image_size / model_patch)^2], row-major over the patch grid.
  """
  if image_size % mask_patch or mask_patch % model_patch:
    raise ValueError(f"image size {image_size} must be divisible by the mask square "
                     f"{mask_patch}, and that by the model patch {model_patch}")
  side = image_size // mask_patch
  k = num_masked_squares(side * side, mask_ratio)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, side * side)), axis=1), axis=1)
  squares = (rank < k).reshape(batch, side, side)
  scale = mask_patch // model_patch
  patches = jnp.repeat(jnp.repeat(squares, scale, axis=1), scale, axis=2)
  return patches.reshape(batch, -1)


# ------------------------------------------------------------------ disjoint multi-masks (ExtreMA)

def disjoint_kept(num_patches: int, mask_ratio: float, num_masks: int) -> int:
  """Patches each of `num_masks` disjoint masks keeps; ValueError if they do not fit."""
  keep = num_kept(num_patches, mask_ratio)
  if num_masks < 1:
    raise ValueError(f"num_masks must be >= 1, got {num_masks}")
  if keep < 1:
    raise ValueError(f"mask_ratio {mask_ratio} keeps no patch out of {num_patches}")
  if num_masks * keep > num_patches:
    raise ValueError(f"{num_masks} disjoint masks of {keep} patches (mask_ratio {mask_ratio}) "
                     f"need {num_masks * keep} > {num_patches} patches")
  return keep


def disjoint_keep_indices(rng, batch: int, num_patches: int, mask_ratio: float,
                          num_masks: int):
  """ExtreMA's K disjoint masks per image from one permutation: mask j keeps the j-th
  consecutive slice of int(L(1-r)) shuffled positions, so no patch is seen twice.

  Returns (keep_indices [B, K, k] int32, mask [B, K, L] bool, True = hidden in copy j).
  """
  keep = disjoint_kept(num_patches, mask_ratio, num_masks)
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  keep_indices = ids_shuffle[:, :num_masks * keep].reshape(batch, num_masks, keep)
  # Position l belongs to slice rank(l) // k; positions past the K slices stay hidden.
  slot = jnp.argsort(ids_shuffle, axis=1) // keep
  mask = slot[:, None, :] != jnp.arange(num_masks)[None, :, None]
  return keep_indices, mask
