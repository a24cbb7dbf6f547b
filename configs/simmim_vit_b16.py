"""SimMIM pre-training of ViT-B/16 on ImageNet-1K: the official SimMIM ViT-B recipe
(`simmim_pretrain__vit_base__img224__800ep.yaml`): 224 px, 32-px masks at ratio 0.6,
800 epochs at batch 2048, lr 1e-4 per 512 (4e-4), warmup 10 epochs, x0.1 at epoch 700,
weight decay 0.05, drop-path 0.1, gradient clipping 5.

  python -m flip_jax.main --config=configs/simmim_vit_b16.py --workdir=DIR \
      --config.data.data_dir=TFDS_DIR

Differences from the official ViT: it uses a shared relative position bias and layer
scale (init 0.1) and no absolute position embedding; our ViT has neither, so it keeps
fixed 2-D sin-cos position embeddings (added after the mask token, as SimMIM does).
"""
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  if arg not in (None, ""):
    raise ValueError(f"simmim_vit_b16 takes no argument, got {arg!r}")
  c = simmim_recipe.simmim_config()
  c.image_size = 224
  c.model.encoder = "vit"
  c.model.image.update(variant="B/16", pos_emb="sincos2d", cls_token=True, pool="gap",
                       drop_path=0.1, mask_token=True, scan=True)
  simmim_recipe.set_length(c, 800 * simmim_recipe.IMAGENET_TRAIN)
  c.evals.val = dict(type="val_loss", every_steps=5000, dataset="imagenet2012",
                     split="validation", batch_size=1024)
  return c
