"""Vision Transformer that every method shares.

Masking comes in two forms: `keep_indices` drops the masked patches (FLIP/MAE: the
encoder only sees the kept tokens, which is where FLIP's speed-up comes from) and
`mask` replaces masked patch embeddings by a learned token (EVA/SimMIM: the encoder
sees the full grid). Position embeddings are added to patches *before* either, so a
kept token keeps its position.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flip_jax import sharding
from flip_jax.models import heads as heads_lib
from flip_jax.models import inits as inits_lib
from flip_jax.models.layers import Dense, Encoder, LayerNorm, param

# name -> (width, depth, heads, mlp_dim)
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}
POOLS = ("gap", "cls", "map", "none")
POS_EMBS = ("sincos2d", "learned")


class ViTDims(NamedTuple):
  width: int
  depth: int
  heads: int
  mlp_dim: int
  patch: int


def vit_dims(variant: str, width: int = 0, depth: int = 0, heads: int = 0,
             mlp_dim: int = 0) -> ViTDims:
  """The variant's dims with every non-zero argument taking precedence ('custom/<patch>'
  takes them all from the arguments; a zero left means the variant is incomplete)."""
  dims, patch = parse_variant(variant)
  given = (width, depth, heads, mlp_dim)
  return ViTDims(*(a or b for a, b in zip(given, dims or (0, 0, 0, 0))), patch)


def parse_variant(variant: str) -> tuple[tuple[int, int, int, int] | None, int]:
  """'L/16' -> ((1024, 24, 16, 4096), 16); 'custom/8' -> (None, 8)."""
  m = re.fullmatch(r"(\w+)/(\d+)", variant)
  if not m or (m.group(1) not in VARIANTS and m.group(1) != "custom"):
    raise ValueError(f"unknown ViT variant {variant!r}: expected one of "
                     f"{[k + '/<patch>' for k in VARIANTS]} or 'custom/<patch>'")
  return VARIANTS.get(m.group(1)), int(m.group(2))


def sincos2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding [grid*grid, width] (MAE/FLIP layout: (h, w) halves)."""
  if width % 4:
    raise ValueError(f"sincos2d needs width divisible by 4, got {width}")
  omega = 1.0 / temperature ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
  ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                       indexing="ij")
  def emb(pos):
    out = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  # MAE uses grid[0] (w-coordinate) for the first half.
  return np.concatenate([emb(xs), emb(ys)], axis=1).astype(np.float32)


def patchify(images, patch: int):
  """[B, H, W, C] -> [B, (H/p)*(W/p), p, p, C] in row-major patch order."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch}")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch, patch, c)


class VisionTransformer(nnx.Module):

  def __init__(self, *, image_size: int, variant: str = "B/16", width: int = 0, depth: int = 0,
               heads: int = 0, mlp_dim: int = 0, pos_emb: str = "sincos2d",
               cls_token: bool = True, ln_pre: bool = False, pool: str = "gap",
               ln_post: bool = True, act: str = "gelu", drop_path: float = 0.0,
               remat: str = "none", mask_token: bool = False, ln_eps: float = 1e-6,
               patch_bias: bool = True, attn_impl: str | None = None, init: str = "default",
               init_std: float = 0.02, scan: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """init / init_std: the initialisation scheme (flip_jax.models.inits); scan: the blocks
    stored stacked and run as one scanned layer (models.layers.Stacked)."""
    width, depth, heads, mlp_dim, self.patch = vit_dims(variant, width, depth, heads, mlp_dim)
    if not all((width, depth, heads, mlp_dim)):
      raise ValueError("a 'custom' ViT needs width, depth, heads and mlp_dim")
    if pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pos_emb not in POS_EMBS:
      raise ValueError(f"pos_emb must be one of {POS_EMBS}, got {pos_emb!r}")
    if pool == "cls" and not cls_token:
      raise ValueError("pool='cls' needs cls_token=True")
    if image_size % self.patch:
      raise ValueError(f"image_size {image_size} is not divisible by patch {self.patch}")
    self.width, self.depth, self.dtype, self.pool = width, depth, dtype, pool
    self.grid = image_size // self.patch
    self.num_patches = self.grid ** 2
    self.num_prefix_tokens = int(cls_token)
    # What a pixel decoder or a classifier head needs of any encoder (see SwinTransformerV2).
    self.num_features, self.stride = width, self.patch
    self.pos_emb_type = pos_emb
    inits = inits_lib.scheme(init, init_std)
    p = self.patch
    self.patch_embed = Dense((p, p, 3), (width,), (None, None, None), ("embed",), rngs=rngs,
                             dtype=dtype, use_bias=patch_bias, init=inits.patch)
    n_pos = self.num_patches + int(cls_token)
    if pos_emb == "learned":
      self.pos_emb = param(rngs, inits.pos, (n_pos, width), ("length", "embed"))
    self.cls_token = param(rngs, inits.cls, (width,), ("embed",)) if cls_token else None
    self.mask_token = param(rngs, inits.mask, (width,), ("embed",)) if mask_token else None
    self.ln_pre = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype) if ln_pre else None
    self.encoder = Encoder(depth, width, heads, mlp_dim, rngs=rngs, act=act, drop_path=drop_path,
                           ln_eps=ln_eps, dtype=dtype, remat=remat, attn_impl=attn_impl,
                           inits=inits.block, depth_rescale=inits.depth_rescale, scan=scan)
    self.ln_post = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype) if ln_post else None
    self.map_head = (heads_lib.AttentionPool(width, heads, mlp_dim, rngs=rngs, dtype=dtype,
                                             ln_eps=ln_eps, attn_impl=attn_impl)
                     if pool == "map" else None)

  def position_embedding(self):
    """(patch part [L, D], cls part [D] or None)."""
    if self.pos_emb_type == "learned":
      pe = self.pos_emb[...]
      if self.cls_token is not None:
        return pe[1:], pe[0]
      return pe, None
    pe = jnp.asarray(sincos2d(self.grid, self.width))
    return pe, (jnp.zeros((self.width,), jnp.float32) if self.cls_token is not None else None)

  def __call__(self, images, *, keep_indices=None, mask=None, rng=None):
    """images [B, H, W, 3] (normalised) -> dict(tokens [B, T, D], pooled [B, D]).

    keep_indices [B, K] int: only these patches are encoded (FLIP/MAE); [B, M, K]: M
      masked copies of each image, encoded as B*M sequences (row b*M + j is copy j of b).
    mask [B, L] bool: True patches are replaced by the mask token (EVA/SimMIM).
    rng: drop-path key; None = deterministic.
    """
    b = images.shape[0]
    patches = patchify(images.astype(self.dtype), self.patch)
    pe, pe_cls = self.position_embedding()
    copies = 1
    if keep_indices is not None:
      if mask is not None:
        raise ValueError("pass keep_indices (drop patches) or mask (mask token), not both")
      if keep_indices.ndim == 3:  # M masked copies: gathered as one [B, M*K] row per image
        copies = keep_indices.shape[1]
        keep_indices = keep_indices.reshape(b, -1)
    x = self.patch_embed(patches)
    if mask is not None:
      if self.mask_token is None:
        raise ValueError("a boolean mask needs mask_token=True in the model config")
      x = jnp.where(mask[..., None], self.mask_token[...].astype(self.dtype), x)
    x = x + pe.astype(self.dtype)
    if keep_indices is not None:
      # The dropped patches never reach the encoder. (Every patch is embedded, ~1% of the
      # FLOPs: gathering raw patches and per-sample positions instead costs flip_h14 at
      # mask 0.5 0.55 GiB more per v3 core, and it no longer fits.)
      x = jnp.take_along_axis(x, keep_indices[..., None], axis=1)
    if copies > 1:
      # Image-major rows (b*M + j is copy j of image b) keep an image's copies on the
      # device that holds the image.
      b = b * copies
      x = x.reshape(b, -1, self.width)
    if self.cls_token is not None:
      cls = (self.cls_token[...] + pe_cls).astype(self.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    if self.ln_pre is not None:
      x = self.ln_pre(x)
    x = self.encoder(x, rng)
    if self.ln_post is not None:
      x = self.ln_post(x)
    if self.pool == "gap":
      pooled = x.mean(axis=1)
    elif self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "map":
      pooled = self.map_head(x)
    else:
      pooled = None
    return {"tokens": x, "pooled": pooled}


def resample_pos_emb(pos_emb: np.ndarray, num_patches: int, num_prefix: int) -> np.ndarray:
  """Learned pos-emb [prefix + g*g, D] -> [prefix + n, D] by bilinear resize of the grid."""
  old = pos_emb.shape[0] - num_prefix
  g_old, g_new = int(round(old ** 0.5)), int(round(num_patches ** 0.5))
  if g_old ** 2 != old or g_new ** 2 != num_patches:
    raise ValueError(f"cannot resample pos-emb between non-square grids ({old} -> {num_patches})")
  grid = pos_emb[num_prefix:].reshape(g_old, g_old, -1)
  grid = jax.image.resize(grid, (g_new, g_new, grid.shape[-1]), method="bilinear")
  return np.concatenate([pos_emb[:num_prefix], np.asarray(grid).reshape(num_patches, -1)])
