"""CLIP weights from a foreign directory (Hugging Face or open_clip), as our flat params."""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from flip_jax.interop import hf_clip, open_clip, ours
from flip_jax.interop.rules import ConversionError

LOADERS = {"hf": hf_clip.load, "open_clip": open_clip.load}


def load(fmt: str, src: str) -> tuple[dict[str, np.ndarray], ml_collections.ConfigDict]:
  """(our flat params {'image/pos_emb': array, ...}, config) from a foreign directory."""
  if fmt not in LOADERS:
    raise ConversionError(f"--from={fmt!r}: expected one of {sorted(LOADERS)}")
  if not os.path.isdir(src):
    raise ConversionError(f"--src {src}: not a directory")
  return LOADERS[fmt](src, ours.param_shapes)
