"""Supervised classification: fine-tuning a pre-trained encoder (SimMIM's fine-tuning
protocol, the downstream score of the data-scaling study) or training from scratch.

Mean pooling of the encoder's output tokens -> linear head; cross-entropy with label
smoothing (`classify.label_smoothing`); drop-path from the encoder's config; layer-wise lr
decay (`classify.layer_decay` = d): a param at depth i of an encoder with L blocks gets
lr x d^(L + 1 - i), where the patch embedding is depth 0, block b is depth b + 1 and the
final norm and the head are depth L + 1 (the official SimMIM/BEiT assignment; a SwinV2
patch merging sits with the last block of its stage). Start from any checkpoint of ours
with `config.init_from=DIR` and `config.init_prefix='encoder'` (a SimMIM encoder) or
'encoder=image' (a FLIP/CLIP image tower).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from flip_jax import trees
from flip_jax.models import encoders, from_config, swin
from flip_jax.objectives.base import Objective, register
from flip_jax.objectives.simmim import encoder_flops


def encoder_depths(config) -> tuple[int, ...]:
  """Blocks per stage of the configured encoder (a ViT is one stage)."""
  if config.model.encoder == "swinv2":
    s = config.model.swin
    return swin.resolve_variant(s.variant, s.embed_dim, s.depths, s.heads)[1]
  return (from_config.image_dims(config).depth,)


LAYER_IDS = {
    "swinv2": swin.layer_id,
    "vit": lambda path, depths: encoders.vit_layer_id(path, sum(depths)),
}


# Per encoder, the config.model section whose `scan` stores its blocks stacked.
SCAN_SECTIONS = {"vit": "image", "swinv2": "swin"}


def layer_decay_scales(params, encoder: str, depths, decay: float):
  """lr factor per param: decay^(L + 1 - layer id); params outside 'encoder/' (the head) 1."""
  top = sum(depths) + 1

  def scale(path):
    if not path.startswith("encoder/"):
      return 1.0
    return decay ** (top - LAYER_IDS[encoder](path[len("encoder/"):], depths))

  return jax.tree.map(scale, trees.names(params))


@register("classify")
class Classify(Objective):

  def validate(self):
    c, errors = self.config, []
    if c.model.type != "classifier":
      errors.append(f"config.model.type: classify trains a 'classifier', got {c.model.type!r}")
    if c.data.format != "image_label":
      errors.append(f"config.data.format: classify trains on 'image_label' batches, got "
                    f"{c.data.format!r}")
    if c.model.num_classes < 1:
      errors.append(f"config.model.num_classes: must be >= 1, got {c.model.num_classes}")
    if not 0.0 <= c.classify.label_smoothing < 1.0:
      errors.append(f"config.classify.label_smoothing: must be in [0, 1), got "
                    f"{c.classify.label_smoothing}")
    if not 0.0 < c.classify.layer_decay <= 1.0:
      errors.append(f"config.classify.layer_decay: must be in (0, 1], got "
                    f"{c.classify.layer_decay}")
    elif (c.classify.layer_decay != 1.0 and c.model.get("encoder") in SCAN_SECTIONS
          and c.model[SCAN_SECTIONS[c.model.encoder]].scan):
      # A scanned encoder stores its blocks as stacked arrays (models.layers.Stacked,
      # SwinV2's pairs), which one optimizer group updates at one lr.
      errors.append(f"config.classify.layer_decay: layer-wise lr decay needs the "
                    f"encoder's blocks unrolled; set config.model."
                    f"{SCAN_SECTIONS[c.model.encoder]}.scan=false (the weights load "
                    f"either way)")
    return errors + from_config.encoder_errors(c)

  def build(self, rngs):
    return from_config.build(self.config, rngs=rngs, dtype=self.dtype)

  def loss(self, model, batch, rng, step):
    del step
    return self._loss(model(batch["image"], rng=rng), batch["label"])

  def validation_loss(self, model, batch):
    """No drop-path; metrics include top-1 accuracy (the study's downstream score)."""
    return self._loss(model(batch["image"]), batch["label"])

  def _loss(self, logits, labels):
    n = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, n), self.config.classify.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, {"top1": (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()}

  def lr_scales(self, params):
    c = self.config
    if c.classify.layer_decay == 1.0:
      return None
    return layer_decay_scales(params, c.model.encoder, encoder_depths(c), c.classify.layer_decay)

  def batch_spec(self):
    c = self.config
    return {"image": jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3),
                                          jnp.float32),
            "label": jax.ShapeDtypeStruct((c.batch_size,), jnp.int32)}

  def image_features(self, model, images):
    return model.features(images)

  def flops_per_sample(self):
    return 3 * encoder_flops(self.config)
