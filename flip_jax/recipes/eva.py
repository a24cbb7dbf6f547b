"""EVA-01's pre-training recipe (Fang et al., CVPR 2023; `EVA-01/eva/run_eva_pretraining.py`),
shared by configs/eva_{g14,l14,b16}.py. EVA reads `config.teacher` (the frozen CLIP vision
tower) and `config.mask` (block masking), both declared in flip_jax/config_base.py.

Lengths are in samples. The paper trains 150 epochs on Merged-30M (29.6M images: IN-21K,
CC12M, CC3M, Object365, COCO, ADE20K), warmup 2 epochs; that set is not public, so the
data section points at ImageNet-1K in TFDS, which the user replaces.

As the official code: the student is initialised as BEiT's `modeling_pretrain.py`
(trunc-normal with `init_std` 0.02 on every Linear/Conv, the tokens and the positions,
then `fix_init_weight`: block i's attention output and fc2 divided by sqrt(2 (i + 1));
'beit' in flip_jax/models/inits.py); weight decay spares 1-D params, biases and the
model's `no_weight_decay()` {pos_embed, cls_token} (`optim_factory.get_parameter_groups`),
so the mask token, a [1, 1, D] tensor there, is decayed; the validation loss masks every
other patch of the flattened grid (`engine_for_pretraining.evaluate_pt`:
`bool_masked_pos[:, 0::2] = 1`).
"""
import ml_collections

from flip_jax.config_base import base_config

MERGED_30M = 29_600_000  # images in EVA's pre-training set (paper, Table 2)
# Our class token, mask token and LayerNorm scales are all 1-D: name what EVA exempts.
NO_DECAY = (r"(^|/)bias$", r"(^|/)scale$", r"pos_emb", r"cls_token")


def eva_base() -> ml_collections.ConfigDict:
  """What every EVA config shares: the model shape and the batch format."""
  c = base_config()
  c.objective = "eva"
  c.mask_ratio = 0.0  # FLIP's knob; EVA masks config.mask.num_masked patches block-wise
  c.model.type = "image_tower"  # the student: a ViT without projection
  c.model.embed_dim = 0  # the prediction head's width is the teacher's feature width
  c.model.image.update(pos_emb="learned", cls_token=True, mask_token=True, pool="gap",
                       ln_pre=False, ln_post=True, act="gelu", init="beit", init_std=0.02)
  c.optim.no_decay = NO_DECAY
  c.tokenizer = ""
  c.data.format = "image"
  c.mask.update(num_masked=105, min_block=16)
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
  # Pod scale: one compiled block; its non-batched matmul outputs saved (each size's plan).
  c.model.image.update(scan=True, remat="dots_no_batch")
  c.data.update(source="tfds", name="imagenet2012", split="train", text_key="label",
                rrc_area=(0.2, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True)
  c.optim.update(lr_per_256=1e-3 * 256 / 4096, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05,
                 grad_clip=3.0, schedule="cosine", warmup_samples=2 * MERGED_30M,
                 end_lr_ratio=1e-5 / 1e-3)
  c.log_every_steps = 200
  c.ckpt_every_steps = 2000
  # EVA's validation loss: ImageNet val images, every other patch masked.
  c.evals.val_loss = dict(type="val_loss", every_steps=5000, dataset="imagenet2012",
                          split="validation[:4096]", batch_size=512)
  return c
