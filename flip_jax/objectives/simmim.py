"""SimMIM (Xie et al., CVPR 2022; data scaling: Xie et al., CVPR 2023): masked image
modeling by direct pixel regression.

ceil(r * n) of the n (image / mask_patch)^2 squares are masked (r = config.mask_ratio,
0.6), upsampled to the encoder's patch grid; masked patch embeddings become a learned mask
token; a linear decoder predicts stride^2 * 3 pixel values per output token (pixel shuffle
back to the image; stride 32 for a 4-stage SwinV2, the patch size for a ViT); the loss is
the L1 distance on normalised pixels over the masked pixels only, divided by the 3 colour
channels as in the official code. `simmim.norm_target_patch > 0` normalises the target by
the mean and std of a k x k neighbourhood first (the official SwinV2 recipe: 47).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flip_jax import masking
from flip_jax.models import from_config, layers, swin
from flip_jax.objectives.base import Objective, register


def pixel_mask(patch_mask, image_size: int):
  """bool [B, L] on a square patch grid -> float32 [B, S, S] per pixel."""
  b, n = patch_mask.shape
  g = int(round(n ** 0.5))
  p = image_size // g
  grid = patch_mask.reshape(b, g, g)
  return jnp.repeat(jnp.repeat(grid, p, axis=1), p, axis=2).astype(jnp.float32)


def masked_l1(target, reconstruction, patch_mask):
  """sum |target - reconstruction| over masked pixels and channels / masked pixels / 3."""
  weight = pixel_mask(patch_mask, target.shape[1])[..., None]
  l1 = jnp.abs(target.astype(jnp.float32) - reconstruction.astype(jnp.float32))
  return (l1 * weight).sum() / (weight.sum() + 1e-5) / target.shape[-1]


def local_normalize(images, k: int):
  """Each pixel minus the mean, over the std (unbiased, +1e-6), of its k x k neighbourhood
  (inside the image only: borders average over fewer pixels)."""
  x = images.astype(jnp.float32)
  pad = ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0))

  def box_sum(v):
    return jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, k, k, 1), (1, 1, 1, 1), pad)

  count = box_sum(jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32))
  mean = box_sum(x) / count
  var = (box_sum(x * x) / count - mean ** 2) * (count / (count - 1))
  return (x - mean) / jnp.sqrt(jnp.maximum(var, 0.0) + 1e-6)


def model_patch(config) -> int:
  if config.model.encoder == "swinv2":
    return config.model.swin.patch
  return from_config.image_dims(config).patch


@register("simmim")
class SimMIM(Objective):

  def validate(self):
    c, errors = self.config, []
    if c.model.type != "masked_image":
      errors.append(f"config.model.type: SimMIM trains a 'masked_image' model, got "
                    f"{c.model.type!r}")
    if c.data.format != "image":
      errors.append(f"config.data.format: SimMIM trains on 'image' batches, got "
                    f"{c.data.format!r}")
    if not 0.0 < c.mask_ratio < 1.0:
      errors.append(f"config.mask_ratio: SimMIM needs a ratio in (0, 1), got {c.mask_ratio}")
    encoder = from_config.encoder_errors(c)
    errors += encoder
    if encoder:
      return errors
    section = "swin" if c.model.encoder == "swinv2" else "image"
    if not c.model[section].mask_token:
      errors.append(f"config.model.{section}.mask_token: SimMIM replaces masked patches by "
                    "a mask token; set it to True")
    s, patch = c.simmim, model_patch(c)
    if c.image_size % s.mask_patch or s.mask_patch % patch:
      errors.append(f"config.simmim.mask_patch: {s.mask_patch} must divide image_size "
                    f"{c.image_size} and be a multiple of the model patch {patch}")
    if s.norm_target_patch < 0 or (s.norm_target_patch and s.norm_target_patch % 2 == 0):
      errors.append(f"config.simmim.norm_target_patch: 0 (off) or an odd size, got "
                    f"{s.norm_target_patch}")
    return errors

  def build(self, rngs):
    return from_config.build(self.config, rngs=rngs, dtype=self.dtype)

  def loss(self, model, batch, rng, step):
    del step
    r_mask, r_drop = jax.random.split(rng)
    return self._loss(model, batch["image"], r_mask, r_drop)

  def validation_loss(self, model, batch):
    """Masks from a fixed seed (the same for every batch), no drop-path."""
    return self._loss(model, batch["image"], jax.random.key(0), None)

  def _loss(self, model, images, r_mask, r_drop):
    c = self.config
    mask = masking.square_grid_mask(r_mask, images.shape[0], c.image_size,
                                    c.simmim.mask_patch, model_patch(c), c.mask_ratio)
    reconstruction = model(images, mask, rng=r_drop)
    target = images
    if c.simmim.norm_target_patch:
      target = local_normalize(images, c.simmim.norm_target_patch)
    loss = masked_l1(target, reconstruction, mask)
    return loss, {"masked_fraction": mask.astype(jnp.float32).mean()}

  def batch_spec(self):
    c = self.config
    return {"image": jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3),
                                          jnp.float32)}

  def image_features(self, model, images):
    return model.features(images)

  def flops_per_sample(self):
    return 3 * encoder_flops(self.config, decoder=True)


def encoder_flops(config, *, decoder: bool = False) -> float:
  """Forward matmul FLOPs of one image through the configured encoder (+ pixel decoder)."""
  c = config
  if c.model.encoder == "swinv2":
    s = c.model.swin
    embed_dim, depths, _ = swin.resolve_variant(s.variant, s.embed_dim, s.depths, s.heads)
    total = swin.flops(c.image_size, s.patch, s.window, embed_dim, depths, s.mlp_ratio)
    width, stride = embed_dim * 2 ** (len(depths) - 1), s.patch * 2 ** (len(depths) - 1)
  else:
    width, depth, _, mlp, patch = from_config.image_dims(c)
    grid = (c.image_size // patch) ** 2
    tokens = grid + int(c.model.image.cls_token)
    total = layers.transformer_flops(tokens, width, depth, mlp) + 2 * grid * patch ** 2 * 3 * width
    stride = patch
  if decoder:
    total += 2 * (c.image_size // stride) ** 2 * width * stride * stride * 3
  return float(total)
