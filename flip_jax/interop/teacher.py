"""A pretrained image tower to distil from (EVA's teacher), read from any checkpoint we load.

`path` is one of
- a flip_jax training workdir, a checkpoint dir inside one, or an exported directory
  (config.json beside checkpoints/): the `image` and `image_proj` params of its newest step;
- a Hugging Face `CLIPModel` / `CLIPVisionModel[WithProjection]` directory (config.json
  with a `model_type`, *.safetensors, optionally preprocessor_config.json);
- an open_clip hub-layout directory (open_clip_config.json + open_clip_model.safetensors);
- `random:<preset>` (a name in PRESETS): that architecture with random weights, for
  benchmarks and compile checks where only shapes matter.

`read_config` is cheap (JSON and safetensors headers only), so the teacher's
architecture, grid and normalisation are known before anything is built or compiled;
`read_params` then loads the weights, named as our params ('image/pos_emb', ...).
"""
from __future__ import annotations

import glob
import os

import ml_collections
import numpy as np
from safetensors import safe_open

from flip_jax import checkpoint, config_io, trees
from flip_jax.interop import foreign, hf_clip, open_clip, ours
from flip_jax.interop.rules import ConversionError

RANDOM = "random:"
# Hugging Face config.json contents of public CLIP vision towers (architecture only).
PRESETS = {
    # openai/clip-vit-large-patch14, EVA-01's teacher
    "clip_l14": dict(model_type="clip_vision_model", hidden_size=1024,
                     intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14, projection_dim=768,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5),
    # the size of configs/flip_debug.py's image tower (32 px, 4x4 patches): tests, debug
    "clip_tiny": dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256,
                      num_hidden_layers=3, num_attention_heads=4, image_size=32,
                      patch_size=8, projection_dim=64, hidden_act="gelu",
                      layer_norm_eps=1e-6),
    # openai/clip-vit-base-patch16
    "clip_b16": dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, image_size=224,
                     patch_size=16, projection_dim=512, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5),
}
KINDS = ("random", "hf", "open_clip", "flip_jax")


def kind(path: str) -> str:
  """Which of KINDS `path` is; raises naming the path if none."""
  if path.startswith(RANDOM):
    if path[len(RANDOM):] not in PRESETS:
      raise ConversionError(f"{path}: unknown preset; have "
                            f"{[RANDOM + name for name in sorted(PRESETS)]}")
    return "random"
  if not path:
    raise ConversionError("no path given")
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file or directory")
  if os.path.isfile(os.path.join(path, open_clip.CONFIG_FILE)):
    return "open_clip"
  config_file = os.path.join(path, config_io.CONFIG_FILE)
  if os.path.isfile(config_file) and "model_type" in hf_clip.read_json(config_file):
    return "hf"
  return "flip_jax"


def _hf_weight_names(src: str) -> set[str]:
  """Tensor names in the *.safetensors files of `src`, from their headers only."""
  files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
  if not files:
    raise ConversionError(f"{src}: no *.safetensors weights (pickled .bin/.pt files are "
                          f"not read)")
  names = set()
  for f in files:
    with safe_open(f, framework="numpy") as weights:
      names.update(weights.keys())
  return names


def _read_hf(path: str) -> ml_collections.ConfigDict:
  config_file = os.path.join(path, config_io.CONFIG_FILE)
  preprocessor_file = os.path.join(path, "preprocessor_config.json")
  preprocessor = (hf_clip.read_json(preprocessor_file) if os.path.isfile(preprocessor_file)
                  else None)
  raw = hf_clip.read_json(config_file)
  # Only a vision-only model may lack the projection (CLIPVisionModel); a config that is
  # no CLIP at all is refused by config_from_hf before any weights file is opened.
  has_projection = (raw.get("model_type") != "clip_vision_model"
                    or "visual_projection.weight" in _hf_weight_names(path))
  return hf_clip.config_from_hf(raw, source=config_file, preprocessor=preprocessor,
                                has_projection=has_projection)


def _read_open_clip(path: str) -> ml_collections.ConfigDict:
  config_file = os.path.join(path, open_clip.CONFIG_FILE)
  raw = hf_clip.read_json(config_file)
  return open_clip.config_from_open_clip(raw.get("model_cfg", raw), source=config_file,
                                         preprocess=raw.get("preprocess_cfg"))


def _read_ours(path: str) -> ml_collections.ConfigDict:
  workdir = ours.find_workdir(path)
  try:
    checkpoint.find_checkpoint_dir(path)
  except FileNotFoundError as err:
    raise ConversionError(str(err)) from None
  return config_io.read(workdir)


def _read_random(path: str) -> ml_collections.ConfigDict:
  name = path[len(RANDOM):]
  return hf_clip.config_from_hf(PRESETS[name], source=path, has_projection=True)


CONFIG_READERS = {"random": _read_random, "hf": _read_hf, "open_clip": _read_open_clip,
                  "flip_jax": _read_ours}


def read_config(path: str) -> ml_collections.ConfigDict:
  """The config of the model at `path` (model section, image_size, data.mean/std)."""
  return CONFIG_READERS[kind(path)](path)


def read_params(path: str) -> dict[str, np.ndarray] | None:
  """Every param of the checkpoint at `path`, flat with our names; None for `random:`."""
  k = kind(path)
  if k == "random":
    return None
  if k in foreign.LOADERS:
    return foreign.load(k, path)[0]
  return {name: np.asarray(v) for name, v in trees.flatten(checkpoint.load_params(path)).items()}
