"""Fine-tuning recipe (classify objective), alone or derived from a pre-training config.

Defaults follow the official SimMIM SwinV2-B fine-tuning config: AdamW b 0.9/0.999, weight
decay 0.05, lr 1.25e-3 per 512 samples, layer decay 0.75, label smoothing 0.1, drop-path
0.1, gradient clipping 5.0, warmup 20 of 100 epochs then cosine. Not implemented here:
RandAugment, mixup/cutmix and random erasing of that recipe.
"""
import ml_collections

from flip_jax.config_base import base_config

# How a pre-training model's tree holds the encoder the classifier loads (init_prefix).
ENCODER_PREFIX = {"masked_image": "encoder", "classifier": "encoder",
                  "two_towers": "encoder=image", "image_tower": "encoder=image"}


def classify_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.objective = "classify"
  c.model.type = "classifier"
  c.classify.update(label_smoothing=0.1, layer_decay=0.75)
  c.tokenizer = ""
  c.data.update(format="image_label", text_key="", label_key="label", rrc_area=(0.08, 1.0))
  c.optim.update(lr_per_256=1.25e-3 / 2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                 grad_clip=5.0, schedule="cosine", end_lr_ratio=2.5e-7 / 1.25e-3)
  return c


def from_pretraining(pre: ml_collections.ConfigDict, workdir: str, num_classes: int
                     ) -> ml_collections.ConfigDict:
  """A fine-tuning config for the encoder that `pre` (a pre-training run in `workdir`)
  trained: same encoder, image size and normalisation; its params loaded by prefix."""
  if pre.model.type not in ENCODER_PREFIX:
    raise ValueError(f"cannot fine-tune a {pre.model.type!r} model: no image encoder known")
  c = classify_config()
  c.image_size = pre.image_size
  c.model.encoder = "vit" if pre.model.type in ("two_towers", "image_tower") else (
      pre.model.encoder)
  c.model.image = pre.model.image.copy_and_resolve_references()
  c.model.swin = pre.model.swin.copy_and_resolve_references()
  c.model.image.mask_token = c.model.swin.mask_token = False
  c.model.num_classes = num_classes
  c.data.update(source=pre.data.source, name=pre.data.name, data_dir=pre.data.data_dir,
                mean=pre.data.mean, std=pre.data.std, flip=pre.data.flip)
  c.init_from = workdir
  c.init_prefix = ENCODER_PREFIX[pre.model.type]
  return c
