"""EVA-01 ViT-g/14 (~1.0B params), the paper's recipe: 224 px, 105 of 16x16 patches masked
in blocks of >= 16, regressing a frozen CLIP ViT-L/14's patch features.

  python -m flip_jax.main --config=configs/eva_g14.py \
      --config.teacher.path=/data/clip-vit-large-patch14 --workdir=gs://...

The teacher path is required: a Hugging Face CLIP directory (e.g. a local copy of
openai/clip-vit-large-patch14), an open_clip directory, or a flip_jax workdir/export.

`python -m flip_jax.plan --config=configs/eva_g14.py --config.teacher.path=random:clip_l14
--topology=v4:4x4x8` (128 chips, mesh 16x8x1, batch 4096): 28.7 of 32 GiB per chip,
fits; predicted 0.31 s a step (MFU 0.66, teacher forward included).
"""
from flip_jax.recipes import eva as eva_recipe


def get_config(arg=None):
  c = eva_recipe.paper_config(arg)
  c.model.image.variant = "g/14"
  # ~1B params: replicated fp32 params + AdamW moments alone take 12.9 GB per device; FSDP
  # over 8 devices shards them (set --config.mesh.fsdp=1 on fewer than 8 devices).
  c.mesh.update(data=-1, fsdp=8)
  return c
