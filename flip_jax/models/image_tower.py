"""A ViT and its projection without a text tower: a CLIP vision tower on its own.

This is what a Hugging Face `CLIPVisionModelWithProjection` holds, and what EVA needs as
its teacher (patch tokens after the final LayerNorm, projected). Its params are named as
in `TwoTowers` ('image', 'image_proj'), so either model loads the other's image half.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flip_jax.models.heads import projection
from flip_jax.models.vit import VisionTransformer


def l2_normalize(x, eps=1e-12):
  """x / ||x|| over the last axis, in float32: jax in, jax out (traced too); numpy in,
  numpy out (host-side evaluation)."""
  xp = jnp if isinstance(x, jax.Array) else np
  x = x.astype(np.float32)
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), eps)


def embed_image(vit: VisionTransformer, proj, images, *, keep_indices=None, rng=None):
  """Pooled image representation, projected if `proj`, L2-normalised [B, D] float32."""
  pooled = vit(images, keep_indices=keep_indices, rng=rng)["pooled"]
  return l2_normalize(proj(pooled) if proj is not None else pooled)


def embed_patches(vit: VisionTransformer, proj, images):
  """Per-patch features [B, L, D]: final tokens (after ln_post) minus the CLS, projected.

  Not normalised: this is the EVA regression target (CLIP's `visual_projection` of its
  `post_layernorm`-ed patch tokens).
  """
  tokens = vit(images)["tokens"][:, vit.num_prefix_tokens:]
  return (proj(tokens) if proj is not None else tokens).astype(jnp.float32)


class ImageTower(nnx.Module):

  def __init__(self, *, image: dict, embed_dim: int, image_size: int, dtype=jnp.float32,
               rngs: nnx.Rngs):
    """embed_dim 0 = no projection (a bare `CLIPVisionModel`)."""
    self.image = VisionTransformer(image_size=image_size, dtype=dtype, rngs=rngs, **image)
    self.image_proj = (projection(self.image.width, embed_dim, rngs=rngs, dtype=dtype)
                       if embed_dim else None)

  def encode_image(self, images, *, keep_indices=None, rng=None):
    return embed_image(self.image, self.image_proj, images, keep_indices=keep_indices, rng=rng)

  def encode_patches(self, images):
    return embed_patches(self.image, self.image_proj, images)
