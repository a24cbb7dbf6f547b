"""What the trainer needs from a pre-training method, and the registry that finds it.

The trainer splits the model into `nnx.Param` (trained, in the optimizer) and every
other Variable ("extra": a frozen teacher, EMA weights). An objective that keeps a
teacher stores it as a non-Param Variable type, and updates it in `after_update`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flip_jax.models import compute_dtype

REGISTRY: dict[str, type["Objective"]] = {}


def register(name: str) -> Callable:
  def wrap(cls):
    cls.name = name
    REGISTRY[name] = cls
    return cls
  return wrap


def training_only_params(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Top-level param subtrees that the objective of `config` uses only in training (EVA's
  regression head); none for a config without a registered objective."""
  method = REGISTRY.get(config.get("objective"))
  return method.training_only_params if method else ()


def get(config: ml_collections.ConfigDict) -> "Objective":
  if config.objective not in REGISTRY:
    raise ValueError(f"config.objective: unknown {config.objective!r}; "
                     f"registered: {sorted(REGISTRY)}")
  return REGISTRY[config.objective](config)


def is_image(field: str) -> bool:
  """Batch fields holding images ('image', ExtreMA's 'image2')."""
  return field.startswith("image")


def normalize_on_device(images: jax.Array, mean, std) -> jax.Array:
  """uint8 [..., C] -> float32 (x / 255 - mean) / std, as x * scale + offset."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  offset = (-mean / std).astype(np.float32)
  return images.astype(jnp.float32) * scale + offset


class Objective:
  """One pre-training method. Subclasses implement `build` and `loss`."""

  name = "base"
  has_text = False  # True when text_features exists (zero-shot, retrieval)
  uses_mask_ratio = True  # config.mask_ratio sets the masking (the benchmark sweeps it)
  # Top-level param subtrees only training uses (EVA's regression head onto the teacher's
  # features): `export` and `inference.load` leave them out of the encoder they read.
  training_only_params: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.dtype = compute_dtype(config.dtype)

  def validate(self) -> list[str]:
    """Config errors specific to this method, each naming its key."""
    return []

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def loss(self, model: nnx.Module, batch: dict, rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss (float32) and metrics, over the global batch."""
    raise NotImplementedError

  def init_extra(self, params: Any, extra: Any) -> Any:
    """Non-trained state at a fresh start, inside the jitted init (an EMA teacher starts as
    a copy of the student's params). Default: as built."""
    del params
    return extra

  def load_extra(self, abstract_extra: Any) -> Any | None:
    """Host arrays for (a subtree of) the non-trained state, read from disk at a fresh start
    (a frozen teacher's weights), as a nested dict mirroring `abstract_extra`; None = nothing
    to load. Not called on resume: the checkpoint holds the extra state."""
    del abstract_extra
    return None

  def after_update(self, params: Any, extra: Any, step: jax.Array) -> Any:
    """New non-trained state after the optimizer step (EMA teachers). Default: unchanged."""
    del params, step
    return extra

  def validation_loss(self, model: nnx.Module, batch: dict
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss made deterministic for held-out data: fixed masks (a fixed seed,
    or EVA's alternate patches), no drop-path. The proxy metric of the data-scaling study."""
    raise NotImplementedError(f"{self.name} defines no validation loss")

  def lr_scales(self, params: Any) -> Any | None:
    """Per-param lr factors (a tree like `params` of floats), e.g. layer-wise lr decay for
    fine-tuning; they multiply `config.optim.lr_mults`. None = all 1."""
    del params
    return None

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes/dtypes of one global batch as the loss takes it (images normalised float32)."""
    raise NotImplementedError

  def host_batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """`batch_spec` as the input pipeline sends it: image fields uint8 (see `prepare`).
    What the trainer's step is compiled for, and what the benchmark and planner feed."""
    return {k: jax.ShapeDtypeStruct(s.shape, jnp.uint8) if is_image(k) else s
            for k, s in self.batch_spec().items()}

  def prepare(self, batch: dict) -> dict:
    """A host batch as `loss` takes it: uint8 image fields normalised on the device,
    (x / 255 - mean) / std with config.data's mean and std in float32, as
    `data.transforms.normalize` would on the host. The pipeline sends uint8 (a quarter of
    the bytes to copy between processes and onto the device, and no float pass on the
    host's cores); float images (already normalised) and other fields pass unchanged."""
    return {k: normalize_on_device(v, self.config.data.mean, self.config.data.std)
            if is_image(k) and v.dtype == jnp.uint8 else v for k, v in batch.items()}

  def image_features(self, model: nnx.Module, images: jax.Array) -> jax.Array:
    """Unmasked, deterministic image representation used by evaluators."""
    raise NotImplementedError

  def image_feature_kinds(self) -> dict[str, Callable]:
    """Other image representations evaluators may ask for by name (the `features` key of
    knn / linear_probe), as name -> fn(model, images). Default: none."""
    return {}

  def text_features(self, model: nnx.Module, tokens: jax.Array) -> jax.Array:
    raise NotImplementedError(f"{self.name} has no text tower")

  def benchmark_parts(self) -> dict[str, Callable]:
    """Parts of the train step the benchmark also times on their own, as
    name -> fn(model, batch) (e.g. a frozen teacher's forward). Default: none."""
    return {}

  def flops_per_sample(self) -> float:
    """Model FLOPs (forward + backward) per training sample, for MFU."""
    raise NotImplementedError
