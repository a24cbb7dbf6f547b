"""SimMIM pre-training of SwinV2-B on ImageNet-1K: the data-scaling paper's recipe
(Xie et al., CVPR 2023; official SimMIM SwinV2 settings, see flip_jax/recipes/simmim.py).

  python -m flip_jax.main --config=configs/simmim_swinv2_b.py:250k --workdir=DIR \
      --config.data.data_dir=TFDS_DIR [--config.data.fraction=0.1]

Argument: the length, '125k' (default) | '250k' | '500k' iterations at batch 2048;
192 px, window 12, 32-px masks at ratio 0.6, step schedule (x0.1 at 7/8).

Scanned stages keep their non-batched matmul outputs (the recipe's 'dots_no_batch'):
`python -m flip_jax.plan --config=configs/simmim_swinv2_b.py --topology=v4:4x4x4` (64
chips, batch 32 a chip) plans 4.8 GiB a chip, 0.112 s a step, 186 s of compile; without
remat 14.5 GiB, 0.119 s, 151 s (one plan at a time on the 2-core machine).
"""
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  return simmim_recipe.swinv2_config("B", arg)
