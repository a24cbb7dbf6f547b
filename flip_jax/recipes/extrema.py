"""ExtreMA's ImageNet-1k recipe (Wu et al., arXiv 2206.04667; official `main.py`,
`lib/builder.py`, `vits.py`), shared by configs/extrema_*.py.

Method keys live in `config.extrema` (declared in flip_jax/config_base.py); the student's mask ratio is
the common `config.mask_ratio`. Lengths are in samples: ImageNet-1k epochs of 1,281,167.
"""
import ml_collections

from flip_jax.config_base import IMAGENET_MEAN, IMAGENET_STD, base_config

IMAGENET_EPOCH = 1_281_167
# config argument -> (mask ratio, number of disjoint masks)
MASKINGS = {"80x5": (0.8, 5), "90x8": (0.9, 8)}


def apply(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The parts every ExtreMA config shares: objective, batch format, encoder layout."""
  c.objective = "extrema"
  c.model.type = "extrema"    # built by the objective (student, predictor, EMA teacher)
  c.model.embed_dim = 0       # unused: the projector's width is extrema.proj_dim
  # vits.py: xavier-uniform Linear layers (the fused [D, 3D] qkv: 'flip''s q/k/v init) and
  # patch kernel (flattened), as flip_jax.models.inits 'flip'.
  c.model.image.update(cls_token=False, pool="none", pos_emb="sincos2d", ln_post=False,
                       init="flip")
  c.data.format = "two_views"
  c.tokenizer = ""            # no text
  # timm's add_weight_decay: no decay on 1-D params (biases, norms, layer scales) and tokens.
  c.optim.no_decay = tuple(c.optim.no_decay) + (r"layer_scale",)
  return c


def imagenet_config(arg=None) -> ml_collections.ConfigDict:
  arg = arg or "80x5"
  if arg not in MASKINGS:
    raise ValueError(f"ExtreMA configs take an argument in {sorted(MASKINGS)}, got {arg!r}")
  c = apply(base_config())
  c.mask_ratio, c.extrema.num_masks = MASKINGS[arg]
  c.image_size = 224
  c.batch_size = 2048
  c.total_samples = 300 * IMAGENET_EPOCH
  c.model.image.drop_path = 0.1  # the student's; the EMA teacher never drops paths
  c.model.image.scan = True  # pod scale: one compiled block (student and EMA teacher)
  # TFDS imagenet2012 records have no caption; the reader's second field is the label,
  # which the 'two_views' format drops.
  c.data.update(source="tfds", name="imagenet2012", split="train", text_key="label",
                rrc_area=(0.2, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True, mean=IMAGENET_MEAN,
                std=IMAGENET_STD)
  c.optim.update(lr_per_256=1.5e-4, b1=0.9, b2=0.95, weight_decay=0.1, schedule="cosine",
                 warmup_samples=40 * IMAGENET_EPOCH)
  c.log_every_steps = 100
  c.ckpt_every_steps = 1000
  return c
