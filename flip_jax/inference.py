"""Embeddings from any checkpoint, without a trainer or an objective.

  model = inference.load(DIR)    # a training workdir or an exported/converted directory
  zi = model.encode_image(images_uint8_nhwc)   # [N, D] L2-normalised
  zt = model.encode_text(["a photo of a cat"]) # or int token ids [N, T]
  logits = model.logit_scale * zi @ zt.T

Images are preprocessed here as evaluation does (shorter side to config.image_size,
bicubic, centre crop; then config.data.mean/std), texts are tokenised with the
checkpoint's own tokenizer. Calls are jitted and run in fixed-size batches sharded over
all local devices, so any number of inputs compiles once.
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from flip_jax import objectives, sharding, trees
from flip_jax.evaluate.base import Features
from flip_jax.interop import ours
from flip_jax.models import compute_dtype, from_config
from flip_jax.models.two_towers import MAX_LOGIT_SCALE


class Model:
  """A loaded checkpoint: numpy in, numpy (float32) out."""

  def __init__(self, config: ml_collections.ConfigDict, params: dict[str, np.ndarray], *,
               workdir: str, dtype=None, device_batch: int = 64):
    self.config, self.workdir = config, workdir
    self.has_text = config.model.type == "two_towers"
    dtype = dtype or compute_dtype(config.dtype)
    abstract = nnx.eval_shape(lambda: from_config.build(config, rngs=nnx.Rngs(0),
                                                        dtype=dtype))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    # Either layout of scanned blocks, into the model's own (trees.fill).
    nnx.replace_by_pure_dict(abstract_params, trees.fill(nnx.to_pure_dict(abstract_params),
                                                         params, workdir))
    mesh = sharding.make_mesh({"data": -1})
    replicated = jax.NamedSharding(mesh, jax.P())
    state = jax.device_put((abstract_params, rest), replicated)
    self._scale = (float(np.exp(np.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)))
                   if self.has_text else None)
    self._features = Features(lambda m, x: m.encode_image(x),
                              (lambda m, t: m.encode_text(t)) if self.has_text else None,
                              graphdef, state, mesh, device_batch=device_batch)
    self._patches = Features(lambda m, x: m.encode_patches(x), None, graphdef, state, mesh,
                             device_batch=device_batch)
    self._tokenizer = None

  @property
  def logit_scale(self) -> float:
    """The multiplier of cosine similarities in the logits: exp(learned log-scale), <= 100."""
    if self._scale is None:
      raise ValueError("this model has no text tower, so no logit scale")
    return self._scale

  def preprocess(self, images) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, S, S, 3] as evaluation feeds the model."""
    from flip_jax.data import transforms  # pulls in grain/PIL; not needed for text
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                       f"{list(images.shape)}")
    size = self.config.image_size
    if images.shape[1:3] != (size, size):
      images = np.stack([transforms.resize_center_crop(im, size) for im in images])
    return transforms.normalize(images, self.config.data.mean, self.config.data.std)

  def encode_image(self, images) -> np.ndarray:
    """uint8 [N, H, W, 3] -> L2-normalised [N, D] (D = embed_dim, or the width without one)."""
    return self._features.image(self.preprocess(images))

  def encode_patches(self, images) -> np.ndarray:
    """uint8 [N, H, W, 3] -> per-patch features [N, L, D] after ln_post and the projection."""
    return self._patches.image(self.preprocess(images))

  def tokenize(self, texts) -> np.ndarray:
    if self._tokenizer is None:
      self._tokenizer = _tokenizer(self.config, self.workdir)
    return self._tokenizer.encode(list(texts))

  def encode_text(self, texts) -> np.ndarray:
    """list of str, or int token ids [N, T] (T <= text_len) -> L2-normalised [N, D]."""
    if not self.has_text:
      raise ValueError("this model has no text tower (config.model.type='image_tower')")
    if isinstance(texts, str):
      raise TypeError("encode_text takes a list of strings, not one string")
    ids = np.asarray(texts)
    if ids.dtype.kind not in "iu":
      ids = self.tokenize(texts)
    if ids.ndim != 2:
      raise ValueError(f"token ids must be [N, T], got shape {list(ids.shape)}")
    return self._features.text(ids.astype(np.int32))


def _tokenizer(config: ml_collections.ConfigDict, workdir: str):
  from flip_jax import data  # the tokenizer lives with the data pipeline
  local = os.path.join(workdir, ours.TOKENIZER_FILE)
  if os.path.isfile(local):
    config = config.copy_and_resolve_references()
    config.tokenizer = local
  elif not config.get("tokenizer"):
    raise ValueError(f"{workdir}: no {ours.TOKENIZER_FILE} and no config.tokenizer; pass "
                     f"token ids to encode_text instead of strings")
  return data.get_tokenizer(config, workdir)


def load(path: str, *, dtype=None, device_batch: int = 64) -> Model:
  """A training workdir (its newest checkpoint), a checkpoint dir, or an exported directory.

  dtype: compute dtype (default: config.dtype, 'auto' = bfloat16 on TPU/GPU, else float32).
  device_batch: rows per device per jitted call.
  """
  ckpt = ours.read(path, drop=objectives.training_only_params)
  ours.check_params(ckpt.params, ckpt.config, source=path)
  return Model(ckpt.config, ckpt.params, workdir=ckpt.workdir, dtype=dtype,
               device_batch=device_batch)
