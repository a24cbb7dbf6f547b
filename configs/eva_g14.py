"""EVA-01 ViT-g/14 (~1.0B params), the paper's recipe: 224 px, 105 of 16x16 patches masked
in blocks of >= 16, regressing a frozen CLIP ViT-L/14's patch features.

  python -m flip_jax.main --config=configs/eva_g14.py \
      --config.teacher.path=/data/clip-vit-large-patch14 --workdir=gs://...

The teacher path is required: a Hugging Face CLIP directory (e.g. a local copy of
openai/clip-vit-large-patch14), an open_clip directory, or a flip_jax workdir/export.

The student's 40 blocks are scanned (one compiled block; README, "Compiling at pod
scale") and keep their q, k, v and attention output projections for the backward pass
('qkv_out_proj'). `python -m flip_jax.plan --config=configs/eva_g14.py
--config.teacher.path=random:clip_l14 --topology=v4:4x4x8` (128 chips, mesh 16x8x1,
batch 4096), one run on the 2-core machine:

| student | HBM GiB / chip (of 32) | predicted step s | MFU | compile s | host GiB |
|---|---|---|---|---|---|
| scanned, 'qkv_out_proj' (this config) | 10.8 | 0.397 | 0.52 | 87 | 2.6 |
| scanned, 'dots_no_batch' (the EVA recipe's) | 14.3 | 0.415 | 0.50 | 67 | 2.6 |
| scanned, 'mlp_hidden' | 9.7 | 0.423 | 0.49 | 79 | 2.7 |
| unrolled, no remat (`--config.model.image.scan=false --config.model.image.remat=none`) | 28.7 | 0.312 | 0.66 | 517 | 13.4 |

(Scanned without remat needs 50 GiB: XLA rematerializes across unrolled layers, not
across scan iterations.) The roofline predicts the scanned step memory-bound and 27%
slower (it re-reads what remat recomputes from); the unrolled one compiles 6x longer, in
5x the host memory, at every restart without a compile cache.
"""
from flip_jax.recipes import eva as eva_recipe


def get_config(arg=None):
  c = eva_recipe.paper_config(arg)
  c.model.image.variant = "g/14"
  # ~1B params: replicated fp32 params + AdamW moments alone take 12.9 GB per device; FSDP
  # over 8 devices shards them (set --config.mesh.fsdp=1 on fewer than 8 devices).
  c.mesh.update(data=-1, fsdp=8)
  c.model.image.remat = "qkv_out_proj"
  return c
