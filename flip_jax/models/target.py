"""What the program being traced is compiled for, read at trace time: the devices of the
mesh set by `jax.set_mesh` (the trainer's and the planner's, compile-only GPUs included),
else jax's default device. The attention choice (and its CPU layout,
attention.heads_major) and the one-CPU-device rewrites (models/materialize.py,
models/dense_matmul.py) ask here."""
from __future__ import annotations

import jax


def target_device() -> tuple[str, str]:
  """(platform, device_kind) the program being traced is compiled for."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  if device is None:
    device = jax.devices()[0]
  return device.platform, device.device_kind


def on_one_cpu() -> bool:
  """Whether the program being traced runs on one CPU device (no mesh, or a 1-device
  one): where the CPU-only rewrites apply."""
  return target_device()[0] == "cpu" and jax.sharding.get_abstract_mesh().size <= 1
