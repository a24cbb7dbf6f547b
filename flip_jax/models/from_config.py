"""Models from `config.model`, for code that has a config but no objective.

Objectives build their model here, and so do weight import/export and inference, which
must rebuild exactly the model a checkpoint was trained (or converted) with without
knowing the method. `config.model.type` says which model: 'two_towers' (CLIP/FLIP) or
'image_tower' (a ViT with its projection and no text, e.g. a CLIP vision tower).
"""
from __future__ import annotations

import ml_collections
from flax import nnx

from flip_jax.models.image_tower import ImageTower
from flip_jax.models.two_towers import TwoTowers
from flip_jax.models.vit import parse_variant

MODEL_TYPES = ("two_towers", "image_tower")
NO_EOS_ID = -1  # config.model.text.eos_id: pool at the largest token id (OpenAI CLIP)


def image_dims(config: ml_collections.ConfigDict) -> tuple[int, int, int, int, int]:
  """(width, depth, heads, mlp_dim, patch) of the ViT, the variant's unless set explicitly."""
  i = config.model.image
  dims, patch = parse_variant(i.variant)
  width, depth, heads, mlp_dim = (a or b for a, b in zip((i.width, i.depth, i.heads, i.mlp_dim),
                                                         dims or (0, 0, 0, 0)))
  return width, depth, heads, mlp_dim, patch


def image_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(config.model.image)


def text_kwargs(config: ml_collections.ConfigDict) -> dict:
  text = dict(config.model.text)
  text["max_len"] = config.text_len
  # ConfigDict overrides need a typed default, so "no EOS id" is -1 there and None here.
  text["eos_id"] = None if text.get("eos_id", NO_EOS_ID) == NO_EOS_ID else text["eos_id"]
  return text


def two_towers_kwargs(config: ml_collections.ConfigDict) -> dict:
  m = config.model
  return dict(image=image_kwargs(config), text=text_kwargs(config), embed_dim=m.embed_dim,
              image_size=config.image_size, logit_scale_init=m.logit_scale_init)


def image_tower_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(image=image_kwargs(config), embed_dim=config.model.embed_dim,
              image_size=config.image_size)


def build(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
  kind = config.model.get("type", "two_towers")
  if kind == "two_towers":
    return TwoTowers(dtype=dtype, rngs=rngs, **two_towers_kwargs(config))
  if kind == "image_tower":
    return ImageTower(dtype=dtype, rngs=rngs, **image_tower_kwargs(config))
  raise ValueError(f"config.model.type: {kind!r} not in {MODEL_TYPES}")
