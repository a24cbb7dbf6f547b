"""SimMIM pre-training of SwinV2-g on ImageNet-1K: the data-scaling paper's recipe
(Xie et al., CVPR 2023; official SimMIM SwinV2 settings, see flip_jax/recipes/simmim.py).

  python -m flip_jax.main --config=configs/simmim_swinv2_g.py:250k --workdir=DIR \
      --config.data.data_dir=TFDS_DIR [--config.data.fraction=0.1]

Argument: the length, '125k' (default) | '250k' | '500k' iterations at batch 2048;
192 px, window 12, 32-px masks at ratio 0.6, step schedule (x0.1 at 7/8).

Mesh data=-1, fsdp=8: replicated, the ~1B params' fp32 state takes 12.9 GB a device and
batch 2048 on a v4-128 slice does not fit. `python -m flip_jax.plan
--config=configs/simmim_swinv2_g.py --topology=v4:4x4x4` (64 chips, mesh 8x8): 29.0 of
32 GiB per chip, fits; predicted 0.34 s a step (roofline MFU 0.29).
"""
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  return simmim_recipe.swinv2_config("g", arg)
