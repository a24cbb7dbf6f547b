"""The FLIP paper's LAION-400M recipe, shared by configs/flip_{b16,l16,h14}.py, as the
official code sets it (facebookresearch/flip: `configs/default.py`, `models_flip.py`,
`input_pipeline_laion.py`, `utils/transform_util.py`, `t5x/train_state_initializer.py`).

Lengths are in samples. The official code counts "virtual ImageNet epochs" of 1,281,167
samples: 10,000 of them (12.8B samples, ~32 LAION-400M epochs) with 20 of warmup
(`configs/default.py`: `warmup_epochs = 20.0`; `cfg_flip_huge14.py` sets 200 for H/14).
Unmasked tuning (official README, "Unmasked tuning"): mask 0, lr 4e-8 per 256, 100 virtual
epochs with 20 of warmup, from the pre-trained params.

Also as the official code: the text tower sees word pieces only (no [CLS]/[SEP]: tf_text's
BertTokenizer with `aug.txt.cls_token=False`), padded with 0 and unmasked (the encoder
never reads `txt_is_valid`), pooled at position 0; images are normalised with the ImageNet
mean/std (`transform_util.normalize_image`); weight decay spares only biases, LayerNorm
scales and position embeddings (`filter_bias_and_norm` and `filter_posembed`: the class
token and the logit scale are decayed); both towers use its init ('flip' in
flip_jax/models/inits.py).
"""
from flip_jax.config_base import IMAGENET_MEAN, IMAGENET_STD, base_config

IMAGENET_EPOCH = 1_281_167
LAION_400M = 400_000_000
# t5x/train_state_initializer.py create_optimizer: decay unless the name ends in bias/scale
# or contains pos_embedding.
NO_DECAY = (r"(^|/)bias$", r"(^|/)scale$", r"pos_emb")


def laion_config(arg=None):
  if arg not in (None, "", "unmasked"):
    raise ValueError(f"FLIP configs take no argument or 'unmasked', got {arg!r}")
  c = base_config()
  c.objective = "flip"
  c.image_size = 224
  c.batch_size = 65536
  c.total_samples = 10_000 * IMAGENET_EPOCH
  c.mask_ratio = 0.5
  # The official code's MLPs use flax's nn.gelu, the tanh approximation, in both towers.
  c.model.image.update(pos_emb="sincos2d", cls_token=True, pool="gap", act="gelu_tanh",
                       init="flip")
  c.model.text.update(causal=False, pool="first", act="gelu_tanh", init="flip",
                      special_tokens=False, padding_mask=False)
  # Pod scale: one compiled block per tower (each config picks its remat policies by plan).
  c.model.image.scan = c.model.text.scan = True
  c.tokenizer = "bert-base-uncased"
  c.text_len = 32
  c.data.update(source="wds", rrc_area=(0.5, 1.0), rrc_ratio=(3 / 4, 4 / 3), flip=True,
                mean=IMAGENET_MEAN, std=IMAGENET_STD)
  c.optim.update(lr_per_256=4e-6, b1=0.9, b2=0.95, weight_decay=0.2, schedule="cosine",
                 warmup_samples=20 * IMAGENET_EPOCH, no_decay=NO_DECAY)
  c.log_every_steps = 200
  c.ckpt_every_steps = 1000
  if arg == "unmasked":
    c.mask_ratio = 0.0
    c.total_samples = 100 * IMAGENET_EPOCH
    c.optim.update(lr_per_256=4e-8, warmup_samples=20 * IMAGENET_EPOCH)
  return c
