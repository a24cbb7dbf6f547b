"""FLIP on the embedded `digits` image-text set: a tiny ViT that trains on a laptop CPU.

  python -m flip_jax.main --config=configs/flip_debug.py --workdir=/tmp/flip_debug

Held-out zero-shot top-1 on digits reaches >= 0.9 in a few minutes on 2 CPU cores.
"""
from flip_jax.config_base import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.objective = "flip"
  c.image_size = 32
  c.batch_size = 128
  c.total_samples = 128 * 1500
  c.mask_ratio = 0.5

  c.model.image.update(variant="custom/8", width=64, depth=3, heads=4, mlp_dim=256)
  c.model.text.update(width=64, depth=2, heads=4, mlp_dim=256)
  c.model.embed_dim = 64

  c.tokenizer = "wordpiece:digits"  # trained on the captions, saved in the workdir
  c.text_len = 16
  c.data.source = "digits"
  c.data.rrc_area = (0.7, 1.0)
  c.data.flip = False  # mirrored digits are other glyphs

  c.optim.update(lr_per_256=2e-3, weight_decay=0.05, b2=0.98,
                 warmup_samples=128 * 100, schedule="cosine")
  c.log_every_steps = 50
  c.ckpt_every_steps = 250
  c.evals.zeroshot = dict(type="zeroshot", every_steps=500, dataset="digits", split="test")
  c.host_malloc_reuse = False  # tiny steps: one malloc arena costs more than it saves
  return c
