"""ExtreMA: extreme masking with an EMA teacher (Wu et al., arXiv 2206.04667).

The student (ViT without input class token -> class-attention pooling -> projector ->
predictor) encodes K disjoint masked copies of the first view, each keeping
int(L(1-r)) patches: B*K short sequences. The teacher, an EMA of the student's encoder,
pooling and projector, encodes the unmasked second view once per image. Loss: the mean
over the K copies of 2 - 2 cos(prediction, target), not symmetrised; or, as the official
`--loss infonce` (`builder.contrastive_loss`), per copy the InfoNCE of the predictions
against the whole batch's targets at temperature T, times 2T. The teacher's
weights are `ema.EmaParam`s (trainer `extra`), updated after every optimizer step with
the cosine momentum schedule; its class-attention output is the representation that
evaluators see.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flip_jax import masking
from flip_jax.models import from_config, layers
from flip_jax.models.heads import MlpHead
from flip_jax.models.image_tower import l2_normalize
from flip_jax.models.instance_encoder import InstanceEncoder
from flip_jax.objectives import ema
from flip_jax.objectives.base import Objective, register


class ExtremaModel(nnx.Module):
  """student (trained), predictor (trained), teacher (EMA of the student, no drop-path)."""

  def __init__(self, *, image: dict, encoder: dict, pred_hidden: int, pred_layers: int, dtype,
               rngs: nnx.Rngs):
    """image: ViT kwargs (drop_path applies to the student only); encoder: the other
    InstanceEncoder kwargs."""
    self.student = InstanceEncoder(image=image, dtype=dtype, rngs=rngs, **encoder)
    proj_dim = encoder["proj_dim"]
    self.predictor = MlpHead(proj_dim, pred_hidden, proj_dim, rngs=rngs, num_layers=pred_layers,
                             dtype=dtype)
    # Same constructor, so the same param tree: init_extra copies the student into it.
    self.teacher = ema.as_ema(InstanceEncoder(image=dict(image, drop_path=0.0), dtype=dtype,
                                              rngs=rngs, **encoder))


def byol_loss(pred, target):
  """pred [B, K, D], target [B, D] -> (mean over b, k of 2 - 2 cos, mean cos)."""
  cos = jnp.einsum("bkd,bd->bk", l2_normalize(pred), l2_normalize(target))
  return (2.0 - 2.0 * cos).mean(), cos.mean()


def infonce_loss(pred, target, temperature: float):
  """pred [B, K, D], target [B, D] -> (mean over k of InfoNCE(pred_k, targets) * 2T, mean
  positive cos): every other image's target is a negative (over the global batch, as the
  official code all-gathers them)."""
  p, z = l2_normalize(pred), l2_normalize(target)
  logits = jnp.einsum("bkd,cd->kbc", p, z) / temperature
  labels = jnp.broadcast_to(jnp.arange(p.shape[0]), logits.shape[:2])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce.mean() * 2.0 * temperature, jnp.einsum("bkd,bd->bk", p, z).mean()


# config.extrema.loss -> fn(pred [B, K, D], target [B, D], config.extrema) -> (loss, mean cos)
LOSSES = {
    "byol": lambda pred, target, e: byol_loss(pred, target),
    "infonce": lambda pred, target, e: infonce_loss(pred, target, e.temperature),
}


@register("extrema")
class Extrema(Objective):

  def validate(self):
    c, errors = self.config, []
    e, i = c.extrema, c.model.image
    if c.model.type != "extrema":
      errors.append(f"config.model.type: ExtreMA builds its own model, set 'extrema', got "
                    f"{c.model.type!r}")
    if c.data.format != "two_views":
      errors.append(f"config.data.format: ExtreMA trains on 'two_views' batches, got "
                    f"{c.data.format!r}")
    if i.cls_token:
      errors.append("config.model.image.cls_token: ExtreMA's ViT has no input class token "
                    "(the class token lives in the class-attention pooling)")
    if i.pool != "none":
      errors.append(f"config.model.image.pool: ExtreMA pools by class attention, set 'none', "
                    f"got {i.pool!r}")
    if 0.0 <= c.mask_ratio < 1.0:  # otherwise config_check reports config.mask_ratio
      try:
        patch = from_config.image_dims(c).patch
        masking.disjoint_kept((c.image_size // patch) ** 2, c.mask_ratio, e.num_masks)
      except ValueError as err:  # a bad variant is reported by config_check
        if "variant" not in str(err):
          errors.append(f"config.extrema.num_masks / config.mask_ratio: {err}")
    if e.loss not in LOSSES:
      errors.append(f"config.extrema.loss: {e.loss!r} not in {sorted(LOSSES)}")
    if not e.temperature > 0:
      errors.append(f"config.extrema.temperature: must be > 0, got {e.temperature}")
    if not 0.0 <= e.ema_momentum <= 1.0:
      errors.append(f"config.extrema.ema_momentum: must be in [0, 1], got {e.ema_momentum}")
    for key in ("pool_depth", "proj_hidden", "proj_dim", "proj_layers", "pred_hidden",
                "pred_layers"):
      if e[key] < 1:
        errors.append(f"config.extrema.{key}: must be >= 1, got {e[key]}")
    d = c.data
    if len(d.color_jitter) != 4 or min(d.color_jitter) < 0 or d.color_jitter[3] > 0.5:
      errors.append(f"config.data.color_jitter: (brightness, contrast, saturation, hue) >= 0 "
                    f"with hue <= 0.5, got {tuple(d.color_jitter)}")
    for key in ("color_jitter_p", "grayscale_p"):
      if not 0.0 <= d[key] <= 1.0:
        errors.append(f"config.data.{key}: a probability in [0, 1], got {d[key]}")
    return errors

  def build(self, rngs):
    c, e = self.config, self.config.extrema
    _, _, heads, mlp_dim, _ = from_config.image_dims(c)
    encoder = dict(image_size=c.image_size, heads=heads, mlp_dim=mlp_dim,
                   pool_depth=e.pool_depth, layer_scale=e.layer_scale, proj_hidden=e.proj_hidden,
                   proj_dim=e.proj_dim, proj_layers=e.proj_layers)
    return ExtremaModel(image=from_config.image_kwargs(c), encoder=encoder,
                        pred_hidden=e.pred_hidden, pred_layers=e.pred_layers, dtype=self.dtype,
                        rngs=rngs)

  def total_steps(self) -> int:
    """The trainer's run length (train.total_steps; objectives do not import train.py)."""
    return math.ceil(self.config.total_samples / self.config.batch_size)

  def momentum(self, step):
    return ema.momentum(step, self.config.extrema.ema_momentum, self.total_steps())

  def loss(self, model, batch, rng, step):
    r_mask, r_drop = jax.random.split(rng)
    loss, metrics = self._loss(model, batch, r_mask, r_drop)
    return loss, dict(metrics, ema_momentum=self.momentum(step))

  def validation_loss(self, model, batch):
    """Masks from a fixed seed, no drop-path; the batch's views are both the eval view."""
    return self._loss(model, batch, jax.random.key(0), None)

  def _loss(self, model, batch, r_mask, r_drop):
    c = self.config
    images = batch["image"]
    b = images.shape[0]
    keep, _ = masking.disjoint_keep_indices(r_mask, b, model.student.encoder.num_patches,
                                            c.mask_ratio, c.extrema.num_masks)
    pred = model.predictor(model.student(images, keep_indices=keep, rng=r_drop))
    target = jax.lax.stop_gradient(model.teacher(batch["image2"]))
    loss, cos = LOSSES[c.extrema.loss](pred.reshape(b, keep.shape[1], -1), target, c.extrema)
    z = l2_normalize(target)
    # Collapse monitor: per-dimension std of the normalised targets (0 when collapsed).
    return loss, {"cos": cos, "target_std": z.std(axis=0).mean(),
                  "tokens_kept": jnp.asarray(keep.shape[2], jnp.float32)}

  def init_extra(self, params, extra):
    """The teacher starts as an exact copy of the student."""
    teacher = jax.tree.map(lambda t, s: s.astype(t.dtype), extra["teacher"], params["student"])
    return dict(extra, teacher=teacher)

  def after_update(self, params, extra, step):
    teacher = ema.update(extra["teacher"], params["student"], self.momentum(step))
    return dict(extra, teacher=teacher)

  def batch_spec(self):
    c = self.config
    shape = (c.batch_size, c.image_size, c.image_size, 3)
    return {"image": jax.ShapeDtypeStruct(shape, jnp.float32),
            "image2": jax.ShapeDtypeStruct(shape, jnp.float32)}

  def image_features(self, model, images):
    """The EMA teacher's instance representation (class-attention output after its final
    LayerNorm, before the projector), unmasked."""
    return model.teacher.represent(images).astype(jnp.float32)

  def image_feature_kinds(self):
    """'teacher_prenorm': what the official linear evaluation reads (`main_lincls.py`
    loads the momentum encoder with --eval_momentum and sets `model.norm = nn.Identity()`,
    a BatchNorm in the probe instead); 'student' / 'student_prenorm': the same of the
    student."""
    return {"teacher": self.image_features, "teacher_prenorm": self.teacher_prenorm,
            "student": self.student_features, "student_prenorm": self.student_prenorm}

  def teacher_prenorm(self, model, images):
    return model.teacher.represent(images, norm=False).astype(jnp.float32)

  def student_features(self, model, images):
    return model.student.represent(images).astype(jnp.float32)

  def student_prenorm(self, model, images):
    return model.student.represent(images, norm=False).astype(jnp.float32)

  def flops_per_sample(self):
    """Matmul FLOPs per image: forward + backward of the student's K masked copies (with
    pooling, projector, predictor), forward of the teacher on the full grid."""
    c, e = self.config, self.config.extrema
    width, depth, _, mlp_dim, patch = from_config.image_dims(c)
    grid = (c.image_size // patch) ** 2
    kept = masking.num_kept(grid, c.mask_ratio)
    embed = 2 * grid * patch * patch * 3 * width

    def pool(tokens):  # one query over [cls; tokens]: q/out on 1 token, k/v on 1 + tokens
      per_block = (2 * 2 * width * width + 2 * 2 * (1 + tokens) * width * width
                   + 2 * 2 * (1 + tokens) * width + 2 * 2 * width * mlp_dim)
      return e.pool_depth * per_block

    def head(d_in, hidden, d_out, n):
      dims = [d_in] + [hidden] * (n - 1) + [d_out]
      return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))

    projector = head(width, e.proj_hidden, e.proj_dim, e.proj_layers)
    predictor = head(e.proj_dim, e.pred_hidden, e.proj_dim, e.pred_layers)
    student = embed + e.num_masks * (layers.transformer_flops(kept, width, depth, mlp_dim)
                                     + pool(kept) + projector + predictor)
    teacher = embed + layers.transformer_flops(grid, width, depth, mlp_dim) + pool(grid) + projector
    return 3 * student + teacher
