"""SimMIM on the embedded `digits` images (32 px): a tiny SwinV2 that trains on a laptop CPU.

  python -m flip_jax.main --config=configs/simmim_debug.py --workdir=/tmp/simmim_debug

Argument 'vit': a tiny ViT backbone instead (patch 4, stride 4). 8-px mask squares (a
32-px square would hide the whole image), two Swin stages (stride 8, a 4x4 output grid).
"""
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  c = simmim_recipe.simmim_config()
  c.image_size = 32
  c.batch_size = 64
  simmim_recipe.set_length(c, 64 * 300)
  c.simmim.mask_patch = 8
  simmim_recipe.debug_encoder(c, arg, mask_token=True)
  # mirrored digits are other glyphs: no flip
  c.data.update(source="digits", name="", rrc_area=(0.67, 1.0), flip=False)
  c.optim.update(lr_per_256=1e-2, warmup_samples=64 * 20)
  c.log_every_steps = 50
  c.ckpt_every_steps = 300
  c.evals.val = dict(type="val_loss", every_steps=0, dataset="digits", split="test",
                     batch_size=64)
  c.host_malloc_reuse = False  # tiny steps: one malloc arena costs more than it saves
  return c
