"""Config validation: every error at once, each naming its key, before anything compiles."""
from __future__ import annotations

import ml_collections

from flip_jax import evaluate, sharding
from flip_jax.data.pipeline import FORMATS
from flip_jax.models import DTYPES, inits
from flip_jax.models.attention import IMPLS as ATTENTION_IMPLS
from flip_jax.models.vit import POOLS, POS_EMBS, parse_variant


class ConfigError(ValueError):
  pass


def _errors(config: ml_collections.ConfigDict, num_devices: int,
            num_processes: int = 1) -> list[str]:
  from flip_jax import objectives  # registry; objectives never import this module

  c, e = config, []
  if not 0.0 <= c.mask_ratio < 1.0:
    e.append(f"config.mask_ratio: must be in [0, 1), got {c.mask_ratio}")
  patch = None
  # The ViT settings matter unless the model's encoder is a SwinV2 (checked by its objective).
  uses_vit = c.model.type in ("two_towers", "image_tower") or c.model.get("encoder") == "vit"
  try:
    _, patch = parse_variant(c.model.image.variant)
  except ValueError as err:
    e.append(f"config.model.image.variant: {err}")
  if not uses_vit:
    patch = None
  if patch and c.image_size % patch:
    e.append(f"config.image_size: {c.image_size} is not divisible by the patch size {patch}")
  if c.model.image.pool not in POOLS:
    e.append(f"config.model.image.pool: {c.model.image.pool!r} not in {POOLS}")
  if c.model.image.pos_emb not in POS_EMBS:
    e.append(f"config.model.image.pos_emb: {c.model.image.pos_emb!r} not in {POS_EMBS}")
  for tower in ("image", "text"):
    if c.model[tower].attn_impl not in ATTENTION_IMPLS:
      e.append(f"config.model.{tower}.attn_impl: {c.model[tower].attn_impl!r} not in "
               f"{ATTENTION_IMPLS}")
  for tower, schemes in (("image", tuple(inits.SCHEMES)), ("text", ("default", "flip"))):
    if c.model[tower].init not in schemes:
      e.append(f"config.model.{tower}.init: {c.model[tower].init!r} not in {schemes}")
  if c.dtype != "auto" and c.dtype not in DTYPES:
    e.append(f"config.dtype: {c.dtype!r} not 'auto' or one of {sorted(DTYPES)}")
  if c.text_len < 1:
    e.append(f"config.text_len: must be >= 1, got {c.text_len}")
  if c.batch_size < 1:
    e.append(f"config.batch_size: must be >= 1, got {c.batch_size}")
  if c.total_samples < c.batch_size:
    e.append(f"config.total_samples: {c.total_samples} is less than one batch ({c.batch_size})")
  try:
    dp = sharding.data_parallel_size(c.mesh, num_devices)
    if c.batch_size % dp:
      e.append(f"config.batch_size: {c.batch_size} is not divisible by the data-parallel size "
               f"{dp} (config.mesh data x fsdp over {num_devices} devices)")
  except ValueError as err:
    e.append(str(err))
  if c.batch_size % num_processes:
    e.append(f"config.batch_size: {c.batch_size} is not divisible by the {num_processes} "
             f"processes (each host reads an equal share)")
  e.extend(_distributed_errors(c))
  if c.max_nonfinite_steps < 1:
    e.append(f"config.max_nonfinite_steps: must be >= 1, got {c.max_nonfinite_steps}")
  if c.data.max_image_pixels < 1:
    e.append(f"config.data.max_image_pixels: must be >= 1, got {c.data.max_image_pixels}")
  if not 0.0 < c.data.get("fraction", 1.0) <= 1.0:
    e.append(f"config.data.fraction: must be in (0, 1], got {c.data.fraction}")
  if c.data.format not in FORMATS:
    e.append(f"config.data.format: {c.data.format!r} not in {sorted(FORMATS)}")
  if c.optim.schedule not in ("cosine", "step", "constant"):
    e.append(f"config.optim.schedule: {c.optim.schedule!r} not in ('cosine', 'step', 'constant')")
  if c.optim.warmup_samples > c.total_samples:
    e.append(f"config.optim.warmup_samples: {c.optim.warmup_samples} exceeds total_samples")
  if c.objective not in objectives.REGISTRY:
    e.append(f"config.objective: unknown {c.objective!r}; registered: "
             f"{sorted(objectives.REGISTRY)}")
  elif not any(m.startswith("config.dtype") for m in e):
    objective = objectives.REGISTRY[c.objective](c)
    e.extend(objective.validate())
    kinds = objective.image_feature_kinds()
    for name, ev in c.evals.items():
      if ev.get("features", "") and ev["features"] not in kinds:
        e.append(f"config.evals.{name}.features: {ev['features']!r} is not an image "
                 f"representation of {c.objective!r} (it offers '' and {sorted(kinds)})")
  e.extend(evaluate.validate(c.evals))
  return e


def _distributed_errors(c: ml_collections.ConfigDict) -> list[str]:
  e = []
  for key in ("heartbeat_timeout_s", "initialization_timeout_s", "shutdown_timeout_s"):
    value = c.distributed[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
      e.append(f"config.distributed.{key}: must be a whole number of seconds >= 2, "
               f"got {value!r}")
  return e


def validate_distributed(config: ml_collections.ConfigDict) -> None:
  """The keys `jax.distributed.initialize` reads, checked before it runs."""
  errors = _distributed_errors(config)
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1) -> None:
  errors = _errors(config, num_devices, num_processes)
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
