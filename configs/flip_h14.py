"""FLIP ViT-H/14 on LAION-400M (zero-shot IN-1K 75.5): 24-layer 1024-wide text tower.

Argument `unmasked`: the unmasked-tuning recipe; see flip_b16.py.

Memory on the paper's v3-512 (512 cores, 16 GiB each) at batch 65,536, from
`python -m flip_jax.plan --config=configs/flip_h14.py --topology=v3:16x16`: at mask 0.5
the step needs 33.5 GiB per core without remat and 17.4 GiB with the image tower's
non-batched matmul outputs saved ('dots_no_batch'); with both towers on it, it fits (15.5 GiB, predicted
1.21 s a step, MFU 0.95; at mask 0.75 11.5 GiB, 0.69 s, planned with the erf GELU: with
the tanh one, XLA's TPU compile at 0.75 needed more than the 23 GB of host memory the
planner ran on). Unmasked
(mask 0) needs more still (63 GiB without remat), so the unmasked recipe fully remats the
image tower, as ViT-L/16's must. Compiling that for 512 devices takes more host memory
than the 23 GB machine the planner ran on, so it was planned on v3:4x4 instead, with the
same per-core batch (128) and FSDP degree (8): `--config=configs/flip_h14.py:unmasked
--topology=v3:4x4 --config.batch_size=4096` needs 8.1 GiB a core (fits; predicted 2.74 s
a step, MFU 0.81).
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
  c.model.image.remat = "full" if arg == "unmasked" else "dots_no_batch"
  c.model.text.remat = "dots_no_batch"
  return c
