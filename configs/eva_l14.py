"""EVA ViT-L/14 with EVA-01's recipe (224 px, 16x16 patches, 105 masked).

The EVA authors' own EVA-L regresses **EVA-CLIP**'s vision features, not OpenAI CLIP's
(EVA-01/eva/README.md, "EVA-L: Learning better MIM representations from EVA-CLIP"): a
better CLIP makes a better MIM teacher, whose encoder can seed the next CLIP. Any CLIP
image tower is a teacher here, including one trained with this library, which closes
that loop:

  python -m flip_jax.main --config=configs/flip_l16.py --workdir=FLIP_WORKDIR
  python -m flip_jax.main --config=configs/eva_l14.py --config.teacher.path=FLIP_WORKDIR \
      --config.teacher.resample=true --workdir=gs://...

(FLIP L/16's 14x14 grid differs from the student's 16x16: `teacher.resample` runs the
teacher at 16 x 16 = 256 px, its sin-cos positions recomputed.) With OpenAI's CLIP L/14:

  python -m flip_jax.main --config=configs/eva_l14.py \
      --config.teacher.path=/data/clip-vit-large-patch14 --workdir=gs://...
"""
from flip_jax.recipes import eva as eva_recipe


def get_config(arg=None):
  c = eva_recipe.paper_config(arg)
  c.model.image.variant = "L/14"
  # Scanned with the recipe's dots_no_batch remat, v4:4x4x8 plans 12.7 GiB a chip and
  # 0.181 s a step; without remat 28.6 GiB and 0.221 s (memory-bound).
  return c
