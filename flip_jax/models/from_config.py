"""Models from `config.model`, for code that has a config but no objective.

Objectives build their model here, and so do weight import/export and inference, which
must rebuild exactly the model a checkpoint was trained (or converted) with without
knowing the method. `config.model.type` says which model: 'two_towers' (CLIP/FLIP),
'image_tower' (a ViT with its projection and no text, e.g. a CLIP vision tower),
'masked_image' (an encoder with a linear pixel decoder: SimMIM) or 'classifier' (an
encoder with a mean-pooling linear head). The last two take their encoder from
`config.model.encoder`: 'vit' (`config.model.image`) or 'swinv2' (`config.model.swin`).
"""
from __future__ import annotations

import ml_collections
from flax import nnx

from flip_jax.models import swin
from flip_jax.models.encoders import Classifier, MaskedImageModel
from flip_jax.models.image_tower import ImageTower
from flip_jax.models.two_towers import TwoTowers
from flip_jax.models.vit import VisionTransformer, ViTDims, vit_dims

MODEL_TYPES = ("two_towers", "image_tower", "masked_image", "classifier")
ENCODERS = ("vit", "swinv2")
NO_EOS_ID = -1  # config.model.text.eos_id: pool at the largest token id (OpenAI CLIP)


def image_dims(config: ml_collections.ConfigDict) -> ViTDims:
  """(width, depth, heads, mlp_dim, patch) of `config.model.image`'s ViT."""
  i = config.model.image
  return vit_dims(i.variant, i.width, i.depth, i.heads, i.mlp_dim)


def image_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(config.model.image)


def text_kwargs(config: ml_collections.ConfigDict) -> dict:
  text = dict(config.model.text)
  text.pop("special_tokens", None)  # the tokenizer's (data/tokenizer.py), not the model's
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


def swin_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(config.model.swin)


def encoder_errors(config: ml_collections.ConfigDict) -> list[str]:
  """Config errors of `config.model.encoder` and its geometry, each naming its key."""
  kind = config.model.encoder
  if kind not in ENCODERS:
    return [f"config.model.encoder: {kind!r} not in {ENCODERS}"]
  if kind == "vit":
    return []  # config_check covers the ViT (variant, patch)
  s = config.model.swin
  try:
    _, depths, _ = swin.resolve_variant(s.variant, s.embed_dim, s.depths, s.heads)
  except ValueError as err:
    return [f"config.model.swin: {err}"]
  try:
    swin.stage_windows(config.image_size, s.patch, s.window, len(depths))
  except ValueError as err:
    return [f"config.image_size / config.model.swin.window / patch: {err}"]
  return []


def build_encoder(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
  """The image encoder `config.model.encoder` names (its mask token as configured)."""
  if config.model.encoder == "swinv2":
    return swin.SwinTransformerV2(image_size=config.image_size, dtype=dtype, rngs=rngs,
                                  **swin_kwargs(config))
  if config.model.encoder == "vit":
    return VisionTransformer(image_size=config.image_size, dtype=dtype, rngs=rngs,
                             **image_kwargs(config))
  raise ValueError(f"config.model.encoder: {config.model.encoder!r} not in {ENCODERS}")


def build(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
  kind = config.model.get("type", "two_towers")
  if kind == "two_towers":
    return TwoTowers(dtype=dtype, rngs=rngs, **two_towers_kwargs(config))
  if kind == "image_tower":
    return ImageTower(dtype=dtype, rngs=rngs, **image_tower_kwargs(config))
  if kind == "masked_image":
    return MaskedImageModel(build_encoder(config, rngs=rngs, dtype=dtype), rngs=rngs,
                            dtype=dtype)
  if kind == "classifier":
    return Classifier(build_encoder(config, rngs=rngs, dtype=dtype), config.model.num_classes,
                      rngs=rngs, dtype=dtype)
  raise ValueError(f"config.model.type: {kind!r} not in {MODEL_TYPES}")
