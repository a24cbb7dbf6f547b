"""config.json beside a checkpoint: written by the trainer and the exporters, read back here.

Reading starts from `base_config()` and overlays the file, so a checkpoint written before
a key existed still loads, with that key at its default (which reproduces the old
behaviour), and JSON lists become the tuples the config declares.
"""
from __future__ import annotations

import json
import os

import ml_collections

from flip_jax.config_base import base_config

CONFIG_FILE = "config.json"


def read(path: str) -> ml_collections.ConfigDict:
  """`path`: a config.json, or a directory holding one."""
  file = os.path.join(path, CONFIG_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file}: no such file (a checkpoint directory needs its "
                            f"{CONFIG_FILE})")
  with open(file) as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as err:
      raise ValueError(f"{file}: not valid JSON ({err})") from None
  config = base_config()
  config.update(values)
  return config


def write(config: ml_collections.ConfigDict, directory: str) -> str:
  path = os.path.join(directory, CONFIG_FILE)
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  return path
