"""Supervised digits classification (32 px) with the classify objective: a tiny SwinV2 from
scratch, or the fine-tuning stage of a pre-trained encoder:

  python -m flip_jax.main --config=configs/classify_debug.py --workdir=/tmp/cls_debug \
      --config.init_from=/tmp/simmim_debug --config.init_prefix=encoder

Argument 'vit': the tiny ViT of simmim_debug.py:vit instead.
"""
from flip_jax.recipes import classify as classify_recipe
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  c = classify_recipe.classify_config()
  c.image_size = 32
  c.batch_size = 64
  c.total_samples = 64 * 150
  c.model.num_classes = 10
  simmim_recipe.debug_encoder(c, arg, drop_path=0.1)
  c.classify.layer_decay = 0.75
  c.data.update(source="digits", rrc_area=(0.67, 1.0), flip=False,
                mean=simmim_recipe.IMAGENET_MEAN, std=simmim_recipe.IMAGENET_STD)
  c.optim.update(lr_per_256=4e-2, warmup_samples=64 * 15)
  c.log_every_steps = 50
  c.ckpt_every_steps = 150
  c.evals.val = dict(type="val_loss", every_steps=0, dataset="digits", split="test",
                     batch_size=60)
  c.host_malloc_reuse = False  # tiny steps: one malloc arena costs more than it saves
  return c
