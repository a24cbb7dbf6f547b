"""SimMIM pre-training recipes, shared by configs/simmim_*.py and the data-scaling study.

From the official code (microsoft/SimMIM and Swin-Transformer `configs/simmim/`): AdamW
b1 0.9, b2 0.999, eps 1e-8, weight decay 0.05 (none on biases, norms, the mask token, the
position-bias MLP and logit scales), lr 1e-4 per 512 samples (4e-4 at batch 2048),
gradient clipping 5.0, drop-path 0.1, warmup 10 of 800 epochs (1/80 of training) then a
constant lr x0.1 at 7/8 of training ('multistep' at epoch 700 of 800). Augmentation:
RandomResizedCrop area (0.67, 1), ratio (3/4, 4/3), horizontal flip; ImageNet mean/std.
Masks: 32-px squares, ratio 0.6.

The data-scaling paper (Xie et al., CVPR 2023) trains SwinV2 at 192 px, window 12, batch
2048, for 125k / 250k / 500k iterations with this step schedule.
"""
import ml_collections

from flip_jax.config_base import base_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN = 1_281_167
ITERATIONS = {"125k": 125_000, "250k": 250_000, "500k": 500_000}
WARMUP_FRACTION = 10 / 800  # official: 10 warmup epochs of 800


def simmim_config() -> ml_collections.ConfigDict:
  """Everything but the encoder and the length: set those in the size's config."""
  c = base_config()
  c.objective = "simmim"
  c.model.type = "masked_image"
  c.mask_ratio = 0.6
  c.simmim.update(mask_patch=32, norm_target_patch=0)
  c.tokenizer = ""
  c.data.update(format="image", source="tfds", name="imagenet2012", text_key="",
                rrc_area=(0.67, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True,
                mean=IMAGENET_MEAN, std=IMAGENET_STD)
  c.batch_size = 2048
  c.optim.update(lr_per_256=1e-4 / 2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                 grad_clip=5.0, schedule="step", step_at=(0.875,))
  c.optim.no_decay = tuple(c.optim.no_decay) + (r"cpb_fc",)
  c.log_every_steps = 100
  c.ckpt_every_steps = 2000
  return c


def debug_encoder(c: ml_collections.ConfigDict, arg, *, drop_path: float = 0.0,
                  mask_token: bool = False) -> None:
  """The tiny encoders of the digits debug configs (32 px): arg 'vit' a ViT (patch 4),
  otherwise ('swinv2', None or '') a two-stage SwinV2 (window 4)."""
  if arg not in (None, "", "swinv2", "vit"):
    raise ValueError(f"debug configs take 'swinv2' (default) or 'vit', got {arg!r}")
  if arg == "vit":
    c.model.encoder = "vit"
    c.model.image.update(variant="custom/4", width=48, depth=2, heads=3, mlp_dim=96,
                         pos_emb="sincos2d", mask_token=mask_token)
  else:
    c.model.encoder = "swinv2"
    c.model.swin.update(variant="custom", embed_dim=24, depths=(2, 2), heads=(2, 4), window=4,
                        drop_path=drop_path, mask_token=mask_token)


def set_length(c: ml_collections.ConfigDict, samples: int) -> None:
  """Training length in samples, warmup 1/80 of it."""
  c.total_samples = int(samples)
  c.optim.warmup_samples = int(samples * WARMUP_FRACTION)


def swinv2_config(variant: str, arg=None) -> ml_collections.ConfigDict:
  """The data-scaling paper's SwinV2 recipe; arg = '125k' | '250k' | '500k' iterations."""
  arg = arg or "125k"
  if arg not in ITERATIONS:
    raise ValueError(f"SimMIM SwinV2 configs take {sorted(ITERATIONS)} (iterations), "
                     f"got {arg!r}")
  c = simmim_config()
  c.image_size = 192
  c.model.encoder = "swinv2"
  # Pod scale: each stage's blocks scanned in (plain, shifted-window) pairs, keeping their
  # non-batched matmul outputs (SwinV2-g's plan, configs/simmim_swinv2_g.py).
  c.model.swin.update(variant=variant, window=12, patch=4, drop_path=0.1, mask_token=True,
                      scan=True, remat="dots_no_batch")
  c.simmim.norm_target_patch = 47  # official SwinV2 SimMIM pre-training config
  if variant == "g":
    # ~1B params: fp32 params + AdamW moments are 12.9 GB per device when replicated, which
    # with the batch-32 activations overflows a 32 GiB v4 chip (flip_jax.plan); FSDP over 8.
    c.mesh.update(data=-1, fsdp=8)
  set_length(c, ITERATIONS[arg] * c.batch_size)
  c.evals.val = dict(type="val_loss", every_steps=5000, dataset="imagenet2012",
                     split="validation", batch_size=1024)
  return c
