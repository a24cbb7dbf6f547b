"""CLIP/FLIP two-tower model: image and text encoders projected into one normalised space."""
from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from flip_jax.models.heads import projection
from flip_jax.models.image_tower import embed_image, embed_patches, l2_normalize
from flip_jax.models.text import TextTransformer
from flip_jax.models.vit import VisionTransformer

MAX_LOGIT_SCALE = math.log(100.0)


class TwoTowers(nnx.Module):

  def __init__(self, *, image: dict, text: dict, embed_dim: int, image_size: int,
               logit_scale_init: float = math.log(1 / 0.07), dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.image = VisionTransformer(image_size=image_size, dtype=dtype, rngs=rngs, **image)
    self.text = TextTransformer(dtype=dtype, rngs=rngs, **text)
    self.image_proj = projection(self.image.width, embed_dim, rngs=rngs, dtype=dtype)
    self.text_proj = projection(self.text.width, embed_dim, rngs=rngs, dtype=dtype)
    self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), axes=())

  def encode_image(self, images, *, keep_indices=None, rng=None):
    """-> L2-normalised [B, embed_dim] float32."""
    return embed_image(self.image, self.image_proj, images, keep_indices=keep_indices, rng=rng)

  def encode_patches(self, images):
    """Projected per-patch features [B, L, embed_dim] (see image_tower.embed_patches)."""
    return embed_patches(self.image, self.image_proj, images)

  def encode_text(self, tokens, *, rng=None):
    return l2_normalize(self.text_proj(self.text(tokens, rng=rng)["pooled"]))

  def scale(self):
    """exp of the learnable temperature, clipped to [1, 100] as in CLIP/FLIP."""
    return jnp.exp(jnp.clip(self.logit_scale[...], 0.0, MAX_LOGIT_SCALE))
