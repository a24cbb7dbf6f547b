"""FLIP ViT-L/16 on LAION-400M: the paper's main model (zero-shot IN-1K 74.3 at mask 0.5).

Argument `unmasked`: the unmasked-tuning recipe; see flip_b16.py. Optimizer state and
params are FSDP-sharded over 8 devices (the official code partitions states for L).

Memory on the paper's v3-256 (256 cores, 16 GiB each) at batch 65,536, from
`python -m flip_jax.plan --config=configs/flip_l16.py --topology=v3:8x16`: masked
pre-training fits without remat (13.9 GiB per core at mask 0.5); unmasked (mask 0) needs
53.7 GiB without remat and 9.5 GiB with the image tower fully rematerialized, so the
unmasked recipe remats it (the official README suggests activation checkpointing there).

On one 8×H100 host (`--topology=h100:8`, FSDP over the 8 GPUs) take 768 images per GPU at
mask 0.5 (`--config.batch_size=6144`: 61.0 of 75.2 GiB, predicted MFU 0.69). `--max_batch`
finds 944 to be the most, which leaves nothing for cuDNN's workspace: see README, "Plan a
pod run".
"""
from flip_jax.recipes import flip as flip_recipe


def get_config(arg=None):
  c = flip_recipe.laion_config(arg)
  c.model.image.variant = "L/16"
  c.model.text.update(width=768, depth=12, heads=12, mlp_dim=3072)
  c.model.embed_dim = 768
  c.mesh.update(data=-1, fsdp=8)
  if arg == "unmasked":
    c.model.image.remat = "full"
  return c
