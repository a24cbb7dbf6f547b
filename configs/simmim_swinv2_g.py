"""SimMIM pre-training of SwinV2-g on ImageNet-1K: the data-scaling paper's recipe
(Xie et al., CVPR 2023; official SimMIM SwinV2 settings, see flip_jax/recipes/simmim.py).

  python -m flip_jax.main --config=configs/simmim_swinv2_g.py:250k --workdir=DIR \
      --config.data.data_dir=TFDS_DIR [--config.data.fraction=0.1]

Argument: the length, '125k' (default) | '250k' | '500k' iterations at batch 2048;
192 px, window 12, 32-px masks at ratio 0.6, step schedule (x0.1 at 7/8).

Mesh data=-1, fsdp=8: replicated, the ~1B params' fp32 state takes 12.9 GB a device and
batch 2048 on a v4-128 slice does not fit. `python -m flip_jax.plan
--config=configs/simmim_swinv2_g.py --topology=v4:4x4x4` (64 chips, mesh 8x8), one plan at
a time on the 2-core machine:

| stages' blocks | HBM GiB / chip (of 32) | predicted step s | MFU | compile s | host GiB |
|---|---|---|---|---|---|
| scanned, 'dots_no_batch' (this config) | 13.5 | 0.352 | 0.28 | 245 | 10.8 |
| scanned, no remat (`--config.model.swin.remat=none`) | 30.6 | 0.403 | 0.24 | 267 | 8.8 |
| unrolled, no remat (`--config.model.swin.scan=false --config.model.swin.remat=none`) | 29.0 | 0.335 | 0.29 | 450 | 21.3 |

Scanned, each stage's (plain, shifted) pairs are stored stacked (README, "Compiling at pod
scale"): the compile takes half the time and half the host memory of the unrolled one,
which on the 23 GB planning machine matters most. (Stacked at call time instead, as
before, the same plan took 316 s, 14.2 GiB of host memory and 13.9 GiB a chip.)
"""
from flip_jax.recipes import simmim as simmim_recipe


def get_config(arg=None):
  return simmim_recipe.swinv2_config("g", arg)
