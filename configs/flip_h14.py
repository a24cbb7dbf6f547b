"""FLIP ViT-H/14 on LAION-400M (zero-shot IN-1K 75.5): 24-layer 1024-wide text tower.

Argument `unmasked`: the unmasked-tuning recipe; see flip_b16.py.

Both towers are scanned (see README, "Compiling at pod scale"). Memory on the paper's
v3-512 (512 cores, 16 GiB each) at batch 65,536, from `python -m flip_jax.plan
--config=configs/flip_h14.py --topology=v3:16x16 --mask_ratios=0.5,0.75` (the recipe's
tanh GELU; 3.3-3.5 GiB of host memory a plan, 90-99 s of compile): the image tower keeps
its MLP hidden layer ('mlp_hidden') and the text tower its non-batched matmul outputs
('dots_no_batch'): 12.8 GiB per core at mask 0.5 (predicted 1.32 s a step, MFU 0.88) and
9.7 GiB at 0.75 (0.74 s). `qkv_out_proj` on the image tower costs the same (H/14's q, k, v
and output projections are as wide as its MLP hidden layer); `dots_no_batch` on both
towers needs 17.6 GiB at mask 0.5 (it fits at 0.75: 12.2 GiB, 0.68 s). Unmasked (mask 0)
needs more still, so the unmasked recipe fully remats the image tower, as ViT-L/16's must.
"""
from flip_jax.recipes import flip as flip_recipe


def get_config(arg=None):
  c = flip_recipe.laion_config(arg)
  c.model.image.variant = "H/14"
  c.model.text.update(width=1024, depth=24, heads=16, mlp_dim=4096)
  c.model.embed_dim = 1024
  if arg != "unmasked":
    c.optim.warmup_samples = 200 * flip_recipe.IMAGENET_EPOCH
  c.mesh.update(data=-1, fsdp=8)
  c.model.image.remat = "full" if arg == "unmasked" else "mlp_hidden"
  c.model.text.remat = "dots_no_batch"
  return c
