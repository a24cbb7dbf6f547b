"""FLIP: CLIP with a randomly masked image encoder (Li et al., arXiv 2212.00794).

The image tower sees only int(L(1-r)) random patches per image; the loss is the
symmetric InfoNCE over the whole global batch. `config.loss_impl='global'` writes it
over the global batch and lets XLA insert the gathers; `'local'` computes each shard's
rows against all-gathered columns under `shard_map` (memory O(b·B) per device instead
of O(B²)); both give the same loss and gradients.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from flip_jax import masking, sharding
from flip_jax.models import from_config, layers
from flip_jax.objectives.base import Objective, register


def infonce_global(zimg, ztxt, scale):
  """Symmetric InfoNCE over the full batch. zimg, ztxt [B, D] L2-normalised."""
  logits = scale * zimg @ ztxt.T
  labels = jnp.arange(logits.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  metrics = {
      "i2t_top1": (jnp.argmax(logits, axis=1) == labels).mean(),
      "t2i_top1": (jnp.argmax(logits, axis=0) == labels).mean(),
  }
  return (i2t + t2i) / 2, metrics


def infonce_local(zimg, ztxt, scale, mesh=None):
  """Same value as `infonce_global`; each shard holds its rows x all-gathered columns."""
  axes = tuple(a for a in sharding.RULES["batch"])

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                     out_specs=(P(), P()), check_vma=False)
  def per_shard(zi, zt, s):
    b = zi.shape[0]
    offset = jax.lax.axis_index(axes) * b
    zi_all = jax.lax.all_gather(zi, axes, tiled=True)
    zt_all = jax.lax.all_gather(zt, axes, tiled=True)
    labels = offset + jnp.arange(b)
    l_i2t = s * zi @ zt_all.T
    l_t2i = s * zt @ zi_all.T
    ce = optax.softmax_cross_entropy_with_integer_labels
    total = jax.lax.psum(ce(l_i2t, labels).sum() + ce(l_t2i, labels).sum(), axes)
    hits = jax.lax.psum(jnp.stack([(jnp.argmax(l_i2t, 1) == labels).sum(),
                                   (jnp.argmax(l_t2i, 1) == labels).sum()]), axes)
    n = b * jax.lax.psum(1, axes)
    return total / (2 * n), hits / n

  loss, hits = per_shard(zimg, ztxt, scale)
  return loss, {"i2t_top1": hits[0], "t2i_top1": hits[1]}


LOSSES = {"global": infonce_global, "local": infonce_local}


@register("flip")
class Flip(Objective):
  has_text = True

  def validate(self):
    c, errors = self.config, []
    if c.loss_impl not in LOSSES:
      errors.append(f"config.loss_impl: {c.loss_impl!r} not in {sorted(LOSSES)}")
    if c.text_len < 1:
      errors.append(f"config.text_len: must be >= 1, got {c.text_len}")
    if c.model.type != "two_towers":
      errors.append(f"config.model.type: FLIP trains 'two_towers' (image and text), "
                    f"got {c.model.type!r}")
    if c.data.format != "image_text":
      errors.append(f"config.data.format: FLIP trains on 'image_text' batches, got "
                    f"{c.data.format!r}")
    if c.model.embed_dim < 1:
      errors.append(f"config.model.embed_dim: FLIP needs a joint embedding, got "
                    f"{c.model.embed_dim}")
    return errors

  def build(self, rngs):
    return from_config.build(self.config, rngs=rngs, dtype=self.dtype)

  def loss(self, model, batch, rng, step):
    del step
    r_mask, r_img, r_txt = jax.random.split(rng, 3)
    return self._loss(model, batch, r_mask, r_img, r_txt)

  def validation_loss(self, model, batch):
    """Masks from a fixed seed (at the training mask ratio), no drop-path."""
    return self._loss(model, batch, jax.random.key(0), None, None)

  def _loss(self, model, batch, r_mask, r_img, r_txt):
    c = self.config
    images, tokens = batch["image"], batch["text"]
    keep = None
    if c.mask_ratio > 0:
      keep, _, _ = masking.random_keep_indices(r_mask, images.shape[0],
                                               model.image.num_patches, c.mask_ratio)
    zimg = model.encode_image(images, keep_indices=keep, rng=r_img)
    ztxt = model.encode_text(tokens, rng=r_txt)
    scale = model.scale()
    loss, metrics = LOSSES[c.loss_impl](zimg, ztxt, scale)
    metrics.update(logit_scale=scale,
                   tokens_kept=jnp.asarray(keep.shape[1] if keep is not None
                                           else model.image.num_patches, jnp.float32))
    return loss, metrics

  def batch_spec(self):
    c = self.config
    return {"image": jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3),
                                          jnp.float32),
            "text": jax.ShapeDtypeStruct((c.batch_size, c.text_len), jnp.int32)}

  def image_features(self, model, images):
    return model.encode_image(images)

  def text_features(self, model, tokens):
    return model.encode_text(tokens)

  def flops_per_sample(self):
    """Forward+backward matmul FLOPs of both towers at the configured mask ratio."""
    c, m = self.config, self.config.model
    w, d, _, mlp, patch = from_config.image_dims(c)
    grid = (c.image_size // patch) ** 2
    kept = masking.num_kept(grid, c.mask_ratio) + int(m.image.cls_token)
    image = layers.transformer_flops(kept, w, d, mlp) + 2 * grid * patch * patch * 3 * w
    text = layers.transformer_flops(c.text_len, m.text.width, m.text.depth, m.text.mlp_dim)
    proj = 2 * (w + m.text.width) * m.embed_dim
    loss = 2 * 2 * c.batch_size * m.embed_dim  # each sample's row and column of the logits
    return 3 * (image + text + proj + loss)
