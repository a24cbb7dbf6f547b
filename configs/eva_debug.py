"""EVA on the embedded `digits` images, distilling the FLIP debug run: runs on a laptop CPU.

  python -m flip_jax.main --config=configs/flip_debug.py --workdir=/tmp/flip_debug
  python -m flip_jax.main --config=configs/eva_debug.py --config.teacher.path=/tmp/flip_debug \
      --workdir=/tmp/eva_debug

The teacher is the FLIP run's image tower (32 px, patch 8: a 4x4 grid, 64-d projected
patch features); the student has the same grid and size, and 6 of its 16 patches (~40%)
are masked in blocks of >= 2.
"""
from flip_jax.recipes import eva as eva_recipe


def get_config(arg=None):
  del arg
  c = eva_recipe.eva_base()
  c.image_size = 32
  c.batch_size = 128
  c.total_samples = 128 * 800
  c.model.image.update(variant="custom/8", width=64, depth=3, heads=4, mlp_dim=256)
  c.teacher.path = "/tmp/flip_debug"
  c.mask.update(num_masked=6, min_block=2)

  c.data.source = "digits"
  c.data.rrc_area = (0.7, 1.0)  # the teacher's training crops
  c.data.flip = False  # mirrored digits are other glyphs

  c.optim.update(lr_per_256=2e-3, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip=3.0,
                 warmup_samples=128 * 100, schedule="cosine", end_lr_ratio=0.01)
  c.log_every_steps = 50
  c.ckpt_every_steps = 250
  c.evals.val_loss = dict(type="val_loss", every_steps=50, dataset="digits", split="test",
                          batch_size=120)
  # The student's features (mean of its tokens), probed once at the end of training.
  c.evals.linear_probe = dict(type="linear_probe", every_steps=0, dataset="digits",
                              train_split="train", test_split="test")
  c.host_malloc_reuse = False  # tiny steps: one malloc arena costs more than it saves
  return c
