"""A ViT whose tokens are pooled by class attention into one instance vector, followed by
an MLP projector: the student (and, as EMA weights, the teacher) of BYOL-style methods
such as ExtreMA. The ViT has no input class token; the class token lives in the pooler.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from flip_jax.models.heads import ClassAttentionPool, MlpHead
from flip_jax.models.vit import VisionTransformer


class InstanceEncoder(nnx.Module):

  def __init__(self, *, image: dict, image_size: int, heads: int, mlp_dim: int,
               pool_depth: int = 2, layer_scale: float = 0.1, proj_hidden: int = 4096,
               proj_dim: int = 256, proj_layers: int = 3, dtype=jnp.float32, rngs: nnx.Rngs):
    """image: VisionTransformer kwargs (cls_token False, pool 'none'); heads / mlp_dim:
    the class-attention blocks' (the ViT's own, for ExtreMA)."""
    self.encoder = VisionTransformer(image_size=image_size, dtype=dtype, rngs=rngs, **image)
    width = self.encoder.width
    act, ln_eps = image.get("act", "gelu"), image.get("ln_eps", 1e-6)
    self.pool = ClassAttentionPool(width, heads, mlp_dim, rngs=rngs, depth=pool_depth,
                                   layer_scale=layer_scale, act=act, ln_eps=ln_eps, dtype=dtype,
                                   attn_impl=image.get("attn_impl"))
    self.projector = MlpHead(width, proj_hidden, proj_dim, rngs=rngs, num_layers=proj_layers,
                             dtype=dtype)

  def represent(self, images, *, keep_indices=None, rng=None, norm: bool = True):
    """The instance representation [B', width] (B' = B, or B*M for keep_indices [B, M, k]);
    norm=False: before the pooler's final LayerNorm."""
    tokens = self.encoder(images, keep_indices=keep_indices, rng=rng)["tokens"]
    return self.pool(tokens, norm=norm)

  def __call__(self, images, *, keep_indices=None, rng=None):
    """Projected embedding [B', proj_dim]."""
    return self.projector(self.represent(images, keep_indices=keep_indices, rng=rng))
