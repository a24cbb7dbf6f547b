"""EVA-01's pre-training recipe (Fang et al., CVPR 2023; `EVA-01/eva/run_eva_pretraining.py`),
shared by configs/eva_{g14,l14,b16}.py, and the config sections only EVA reads.

`config.teacher`: the frozen CLIP vision tower whose patch features the student regresses.
`config.mask`: BEiT-style block masking (flip_jax.masking.block_mask).

Lengths are in samples. The paper trains 150 epochs on Merged-30M (29.6M images: IN-21K,
CC12M, CC3M, Object365, COCO, ADE20K), warmup 2 epochs; that set is not public, so the
data section points at ImageNet-1K in TFDS, which the user replaces.
"""
import ml_collections

from flip_jax.config_base import base_config

MERGED_30M = 29_600_000  # images in EVA's pre-training set (paper, Table 2)


def teacher_section(path: str = "") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # A flip_jax workdir / exported dir, a Hugging Face or open_clip CLIP directory, or
      # 'random:clip_l14' (that architecture, random weights: benchmarks only).
      path=path,
      # Which block's output is the target, after the teacher's ln_post and projection:
      # -1 = the last (EVA), -2 the one before, ..., or 1..depth counted from the input.
      layer=-1,
      # Teacher and student patch grids differ: True runs the teacher on the image resized
      # to (student grid x teacher patch) pixels, its learned position embedding resampled
      # bilinearly (a sin-cos one is recomputed for the grid); False refuses the config.
      resample=False,
  ))


def mask_section(num_masked: int, min_block: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_masked=num_masked,  # target masked patches per image (may fall short, see masking)
      min_block=min_block,    # smallest block area drawn, in patches
      max_block=0,            # largest block area drawn; 0 = num_masked
      min_aspect=0.3,         # block aspect ratio h/w is log-uniform in [min, max]
      max_aspect=0.0,         # 0 = 1 / min_aspect
      tries=10,               # failed tries at one block before the mask is final
  ))


def eva_base() -> ml_collections.ConfigDict:
  """What every EVA config shares: the model shape and the batch format."""
  c = base_config()
  c.objective = "eva"
  c.mask_ratio = 0.0  # FLIP's knob; EVA masks config.mask.num_masked patches block-wise
  c.model.type = "image_tower"  # the student: a ViT without projection
  c.model.embed_dim = 0  # the prediction head's width is the teacher's feature width
  c.model.image.update(pos_emb="learned", cls_token=True, mask_token=True, pool="gap",
                       ln_pre=False, ln_post=True, act="gelu")
  c.tokenizer = ""
  c.data.format = "image"
  c.teacher = teacher_section()
  c.mask = mask_section(num_masked=105, min_block=16)
  return c


def paper_config(arg=None) -> ml_collections.ConfigDict:
  """EVA-01 ViT-g/14's recipe at 224 px (16x16 patches, 105 masked), teacher CLIP L/14."""
  if arg not in (None, ""):
    raise ValueError(f"EVA configs take no argument, got {arg!r}")
  c = eva_base()
  c.image_size = 224
  c.batch_size = 4096
  c.total_samples = 150 * MERGED_30M
  c.model.image.drop_path = 0.1
  c.data.update(source="tfds", name="imagenet2012", split="train", text_key="label",
                rrc_area=(0.2, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True)
  c.optim.update(lr_per_256=1e-3 * 256 / 4096, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05,
                 grad_clip=3.0, schedule="cosine", warmup_samples=2 * MERGED_30M,
                 end_lr_ratio=1e-5 / 1e-3)
  c.log_every_steps = 200
  c.ckpt_every_steps = 2000
  # EVA's validation loss: ImageNet val images, checkerboard mask.
  c.evals.val_loss = dict(type="val_loss", every_steps=5000, dataset="imagenet2012",
                          split="validation[:4096]", batch_size=512)
  return c
