"""EVA (Fang et al., CVPR 2023): regress a frozen CLIP teacher's patch features.

The student ViT sees the image with ~40% of its patches, in blocks, replaced by a
learned mask token; final LN -> Linear(width -> teacher dim) predicts, at every masked
patch, the teacher's feature of that patch (its final tokens after ln_post and the
projection, CLS dropped), and the loss is -cos averaged over the masked patches.

The teacher is built from its checkpoint's own config (`config.teacher.path`, read when
the objective is constructed, so a bad path or architecture is a config error before
anything compiles), stored as `Frozen` variables (no gradient, no optimizer state, saved
with the train state), and run in the same jitted step under `stop_gradient`, in the
compute dtype, sharded by the same rules as the student. Both see the same augmented
crop: the batch holds it normalised with the student's mean/std, and the step maps it
exactly onto the teacher's (an affine map per channel).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from flip_jax import masking, trees
from flip_jax.interop import teacher as teacher_lib
from flip_jax.models import from_config, inits, layers
from flip_jax.models.frozen import freeze
from flip_jax.models.image_tower import ImageTower, embed_patches, l2_normalize
from flip_jax.models.layers import Dense
from flip_jax.models.vit import VisionTransformer, resample_pos_emb
from flip_jax.objectives.base import Objective, register

TEACHER_TYPES = ("two_towers", "image_tower")  # models with a ViT image tower
STUDENT_POOLS = ("gap", "cls")  # image_features; 'map' would add a head the loss never trains


def masked_cosine_loss(pred, target, mask):
  """-cos(pred, target) averaged over the masked patches (float32). [B, L, D], [B, L]."""
  cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
  weights = mask.astype(jnp.float32)
  return -jnp.sum(cos * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class EvaModel(nnx.Module):
  """Student ViT + prediction head (trained) and the teacher image tower (frozen)."""

  def __init__(self, *, image: dict, image_size: int, teacher: dict, teacher_size: int,
               teacher_embed_dim: int, dtype=jnp.float32, rngs: nnx.Rngs):
    """The head is initialised as the student's Linear layers (its `init` scheme's fc1)."""
    self.image = VisionTransformer(image_size=image_size, dtype=dtype, rngs=rngs, **image)
    self.teacher = freeze(ImageTower(image=teacher, embed_dim=teacher_embed_dim,
                                     image_size=teacher_size, dtype=dtype, rngs=rngs))
    target_dim = teacher_embed_dim or self.teacher.image.width
    head_init = inits.scheme(image.get("init", "default"), image.get("init_std", 0.02)).block.fc1
    self.head = Dense((self.image.width,), (target_dim,), ("embed",), ("mlp",), rngs=rngs,
                      dtype=dtype, init=head_init)

  def predict(self, images, mask, rng=None):
    """Predicted teacher features at every patch [B, L, D] float32 (only masked ones count)."""
    tokens = self.image(images, mask=mask, rng=rng)["tokens"][:, self.image.num_prefix_tokens:]
    return self.head(tokens).astype(jnp.float32)


@register("eva")
class Eva(Objective):
  uses_mask_ratio = False
  training_only_params = ("head",)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.teacher_config, self._teacher_error = None, None
    try:
      self.teacher_config = teacher_lib.read_config(config.teacher.path)
    except (ValueError, OSError) as err:  # ConversionError is a ValueError
      self._teacher_error = str(err)

  # ---------------------------------------------------------------- geometry

  @property
  def grid(self) -> int:
    return self.config.image_size // from_config.image_dims(self.config).patch

  def teacher_grid(self) -> int:
    t = self.teacher_config
    return t.image_size // from_config.image_dims(t).patch

  def teacher_size(self) -> int:
    """Pixels the teacher runs at: its own size, or the student's grid in its patches."""
    return self.grid * from_config.image_dims(self.teacher_config).patch

  def teacher_depth(self) -> int:
    """Blocks the teacher runs: the target layer (blocks after it are never built)."""
    layer, depth = self.config.teacher.layer, from_config.image_dims(self.teacher_config).depth
    return depth + 1 + layer if layer < 0 else layer

  def teacher_kwargs(self) -> dict:
    image = from_config.image_kwargs(self.teacher_config)
    image.update(depth=self.teacher_depth(), pool="none", drop_path=0.0, remat="none",
                 mask_token=False, attn_impl=self.config.model.image.attn_impl,
                 scan=self.config.model.image.scan)
    return dict(teacher=image, teacher_size=self.teacher_size(),
                teacher_embed_dim=self.teacher_config.model.embed_dim)

  def mask_kwargs(self) -> dict:
    m = self.config.mask
    return dict(num_masked=m.num_masked, min_block=m.min_block,
                max_block=m.max_block or None, min_aspect=m.min_aspect,
                max_aspect=m.max_aspect or None, tries=m.tries)

  # ---------------------------------------------------------------- config errors

  def validate(self):
    c, errors = self.config, []
    try:
      _ = self.grid
    except ValueError:  # a bad variant: config_check reports it
      return errors
    if c.data.format != "image":
      errors.append(f"config.data.format: EVA trains on 'image' batches, got {c.data.format!r}")
    if c.model.type != "image_tower":
      errors.append(f"config.model.type: EVA's student is an 'image_tower', got "
                    f"{c.model.type!r}")
    if c.model.embed_dim != 0:
      errors.append(f"config.model.embed_dim: must be 0 (the head maps to the teacher's "
                    f"feature width), got {c.model.embed_dim}")
    if not c.model.image.mask_token:
      errors.append("config.model.image.mask_token: EVA replaces masked patches by a "
                    "learned mask token; must be True")
    if c.model.image.pool not in STUDENT_POOLS:
      errors.append(f"config.model.image.pool: {c.model.image.pool!r} not in "
                    f"{STUDENT_POOLS} (the student's image_features)")
    if c.mask_ratio != 0:
      errors.append(f"config.mask_ratio: EVA masks config.mask.num_masked patches "
                    f"block-wise; mask_ratio must stay 0, got {c.mask_ratio}")
    errors += self._mask_errors()
    errors += self._teacher_errors()
    return errors

  def _mask_errors(self) -> list[str]:
    m = self.config.mask
    max_aspect = m.max_aspect or (1 / m.min_aspect if m.min_aspect > 0 else 0.0)
    try:
      masking.check_block_args(self.grid ** 2, m.num_masked, m.min_block,
                               m.max_block or m.num_masked, m.min_aspect, max_aspect, m.tries)
    except ValueError as err:
      return [f"config.mask: {err}"]
    return []

  def _teacher_errors(self) -> list[str]:
    t, path = self.teacher_config, self.config.teacher.path
    if self._teacher_error is not None:
      hint = ("" if path else " (a FLIP workdir, an exported checkpoint, a Hugging Face or "
              "open_clip CLIP directory; random:clip_l14 for a benchmark without weights)")
      return [f"config.teacher.path: {self._teacher_error}{hint}"]
    if t.model.type not in TEACHER_TYPES:
      return [f"config.teacher.path: {path} holds a {t.model.type!r} model, not a CLIP "
              f"image tower ({TEACHER_TYPES})"]
    try:
      depth = from_config.image_dims(t).depth
    except ValueError as err:
      return [f"config.teacher.path: {path}: not a ViT teacher ({err})"]
    errors = []
    layer = self.config.teacher.layer
    if not (1 <= layer <= depth or -depth <= layer <= -1):
      errors.append(f"config.teacher.layer: {layer} is not a block of the {depth}-block "
                    f"teacher (1..{depth} or -1..-{depth})")
    if self.teacher_grid() != self.grid and not self.config.teacher.resample:
      patch = from_config.image_dims(t).patch
      errors.append(
          f"config.teacher.resample: the teacher's patch grid is {self.teacher_grid()}x"
          f"{self.teacher_grid()} ({t.image_size} px / patch {patch}), the student's "
          f"{self.grid}x{self.grid}; set resample=True to run the teacher at "
          f"{self.teacher_size()} px with resampled position embeddings, or match the grids")
    return errors

  # ---------------------------------------------------------------- model

  def build(self, rngs):
    if self._teacher_error is not None:
      raise ValueError(f"config.teacher.path: {self._teacher_error}")
    return EvaModel(image=from_config.image_kwargs(self.config),
                    image_size=self.config.image_size, dtype=self.dtype, rngs=rngs,
                    **self.teacher_kwargs())

  def load_extra(self, abstract_extra):
    """The teacher's weights from `config.teacher.path` (its image tower only)."""
    path = self.config.teacher.path
    params = teacher_lib.read_params(path)
    if params is None:
      logging.warning("config.teacher.path=%s: the teacher has RANDOM weights", path)
      return None
    prefix = int(self.teacher_config.model.image.cls_token)

    def resample(name, value, shape):  # the grid was checked in validate()
      return resample_pos_emb(value, shape[0] - prefix, prefix) if name == "image/pos_emb" \
          else value

    return {"teacher": trees.fill(abstract_extra["teacher"], params,
                                  f"config.teacher.path={path}", adapt=resample)}

  # ---------------------------------------------------------------- step

  def teacher_features(self, model, images):
    """The regression targets [B, L, D] float32 for student-normalised `images`."""
    s, t = self.config.data, self.teacher_config.data
    s_std, t_std = np.asarray(s.std, np.float32), np.asarray(t.std, np.float32)
    scale = s_std / t_std
    shift = (np.asarray(s.mean, np.float32) - np.asarray(t.mean, np.float32)) / t_std
    x = images.astype(jnp.float32) * scale + shift
    size = self.teacher_size()
    if size != x.shape[1]:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="bicubic")
    out = embed_patches(model.teacher.image, model.teacher.image_proj, x)
    return jax.lax.stop_gradient(out)

  def loss(self, model, batch, rng, step):
    del step
    r_mask, r_drop = jax.random.split(rng)
    mask = masking.block_mask(r_mask, batch["image"].shape[0], self.grid,
                              **self.mask_kwargs())
    return self._loss(model, batch["image"], mask, r_drop)

  def validation_loss(self, model, batch):
    """EVA's validation (`evaluate_pt`): every other patch of the flattened grid masked
    (masking.alternate_mask), no drop-path."""
    images = batch["image"]
    return self._loss(model, images, masking.alternate_mask(images.shape[0], self.grid ** 2),
                      None)

  def _loss(self, model, images, mask, rng):
    target = self.teacher_features(model, images)
    loss = masked_cosine_loss(model.predict(images, mask, rng), target, mask)
    return loss, {"masked_patches": mask.sum(axis=1).astype(jnp.float32).mean()}

  def batch_spec(self):
    c = self.config
    return {"image": jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3),
                                          jnp.float32)}

  def image_features(self, model, images):
    """The student's pooled final tokens (config.model.image.pool), unmasked."""
    return model.image(images)["pooled"].astype(jnp.float32)

  def benchmark_parts(self):
    return {"teacher": lambda model, batch: self.teacher_features(model, batch["image"])}

  def flops_per_sample(self):
    """Student forward+backward (patch embed, blocks, head) + teacher forward."""
    width, depth, _, mlp, patch = from_config.image_dims(self.config)
    t_width, _, _, t_mlp, t_patch = from_config.image_dims(self.teacher_config)
    t_depth, n = self.teacher_depth(), self.grid ** 2
    t_dim = self.teacher_config.model.embed_dim or t_width

    def tower(w, d, m, p, prefix):
      return layers.transformer_flops(n + prefix, w, d, m) + 2 * n * p * p * 3 * w

    student = (tower(width, depth, mlp, patch, int(self.config.model.image.cls_token))
               + 2 * n * width * t_dim)
    teacher = (tower(t_width, t_depth, t_mlp, t_patch,
                     int(self.teacher_config.model.image.cls_token))
               + 2 * n * t_width * self.teacher_config.model.embed_dim)
    return 3 * student + teacher
