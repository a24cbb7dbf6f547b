"""The FLIP paper's LAION-400M recipe, shared by configs/flip_{b16,l16,h14}.py.

Lengths are in samples. The official code counts "virtual ImageNet epochs" of
1,281,167 samples: 10,000 of them (12.8B samples, ~32 LAION-400M epochs) with 20 of
warmup. Unmasked tuning: 0.4 LAION-400M epoch at lr 4e-8 per 256, mask 0.
"""
from flip_jax.config_base import base_config

IMAGENET_EPOCH = 1_281_167
LAION_400M = 400_000_000


def laion_config(arg=None):
  if arg not in (None, "", "unmasked"):
    raise ValueError(f"FLIP configs take no argument or 'unmasked', got {arg!r}")
  c = base_config()
  c.objective = "flip"
  c.image_size = 224
  c.batch_size = 65536
  c.total_samples = 10_000 * IMAGENET_EPOCH
  c.mask_ratio = 0.5
  # The official code's MLPs use flax's nn.gelu, the tanh approximation, in both towers.
  c.model.image.update(pos_emb="sincos2d", cls_token=True, pool="gap", act="gelu_tanh")
  c.model.text.update(causal=False, pool="first", act="gelu_tanh")
  c.tokenizer = "bert-base-uncased"
  c.text_len = 32
  c.data.update(source="wds", rrc_area=(0.5, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True)
  c.optim.update(lr_per_256=4e-6, b1=0.9, b2=0.95, weight_decay=0.2, schedule="cosine",
                 warmup_samples=20 * IMAGENET_EPOCH)
  c.log_every_steps = 200
  c.ckpt_every_steps = 1000
  if arg == "unmasked":
    c.mask_ratio = 0.0
    c.total_samples = int(0.4 * LAION_400M)
    c.optim.update(lr_per_256=4e-8, warmup_samples=0)
  return c
