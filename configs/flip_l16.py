"""FLIP ViT-L/16 on LAION-400M: the paper's main model (zero-shot IN-1K 74.3 at mask 0.5).

Argument `unmasked`: the unmasked-tuning recipe; see flip_b16.py. Optimizer state and
params are FSDP-sharded over 8 devices (the official code partitions states for L).

Both towers are scanned (blocks stored stacked, one compiled block each; see README,
"Compiling at pod scale"). Memory on the paper's v3-256 (256 cores, 16 GiB each) at batch
65,536, from `python -m flip_jax.plan --config=configs/flip_l16.py --topology=v3:8x16`:
at mask 0.5 the image tower keeps its non-batched matmul outputs ('dots_no_batch', the
official code's "minimal" remat) and the text tower its MLP hidden layer: 13.96 GiB per
core, predicted 0.863 s a step. Scanned, a tower without remat no longer fits (XLA
rematerializes across unrolled layers, not across scan iterations): the text tower alone
adds 7 GiB. Unmasked (mask 0) needs 53.7 GiB unrolled without remat, so the unmasked
recipe fully remats the image tower (the official README suggests activation
checkpointing there).

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
  c.model.image.remat = "full" if arg == "unmasked" else "dots_no_batch"
  c.model.text.remat = "mlp_hidden"
  return c
