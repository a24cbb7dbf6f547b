"""Rewrite a ViT into the layout CLIP formats store, without changing what it computes.

Both Hugging Face CLIP and open_clip keep a learned position table that includes the
class token's row, and a bias-free patch convolution. Our fixed sin-cos table becomes
that table (its class row is zero, as in the model), and a patch-embedding bias is added
into the patch rows: conv(x) + b + pos == conv(x) + (pos + b).
"""
from __future__ import annotations

import ml_collections
import numpy as np

from flip_jax.models.from_config import image_dims
from flip_jax.models.vit import sincos2d


def fold(params: dict[str, np.ndarray], config: ml_collections.ConfigDict
         ) -> tuple[dict[str, np.ndarray], ml_collections.ConfigDict]:
  """(flat params, config) -> the same model with pos_emb='learned' and patch_bias=False."""
  image = config.model.image
  params, config = dict(params), config.copy_and_resolve_references()
  prefix = int(image.cls_token)
  if image.pos_emb == "sincos2d":
    width, _, _, _, patch = image_dims(config)
    table = sincos2d(config.image_size // patch, width)
    params["image/pos_emb"] = np.concatenate([np.zeros((prefix, width), np.float32), table])
  if image.patch_bias:
    pos = np.array(params["image/pos_emb"], np.float32)
    pos[prefix:] += np.asarray(params.pop("image/patch_embed/bias"), np.float32)
    params["image/pos_emb"] = pos
  config.model.image.pos_emb = "learned"
  config.model.image.patch_bias = False
  return params, config
