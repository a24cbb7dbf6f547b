"""Param trees by name: each leaf is known by its '/'-joined path ('image/encoder/blocks/0/
ln1/scale'), the name checkpoints, exports and regex parameter groups use. Imports nothing
of ours."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util


def path_name(path) -> str:
  """A jax key path -> 'a/b/0/c'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def names(tree):
  """The same tree with each leaf replaced by its name."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), tree)


def flatten(tree) -> dict[str, Any]:
  """Nested params (pure dict, nnx.State, restored Orbax tree) -> {'a/b/0/c': leaf}."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dicts."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def fill(abstract, flat: Mapping[str, Any], source: str, *, prefix: str = "",
         adapt: Callable[[str, np.ndarray, tuple], np.ndarray] | None = None):
  """`abstract` (a tree of shape structs) with every leaf taken from `flat` by its name
  (`prefix/` + name when `prefix`), as host numpy of the leaf's dtype. A leaf of another
  shape goes through `adapt(name, value, shape)` when given (e.g. resampling position
  embeddings); a missing name or a shape still different is an error naming `source`."""
  def pick(path, sds):
    name = "/".join(filter(None, (prefix, path_name(path))))
    if name not in flat:
      raise ValueError(f"{source}: has no param {name!r}, which the model needs")
    value, shape = np.asarray(flat[name]), tuple(sds.shape)
    if value.shape != shape and adapt is not None:
      value = adapt(name, value, shape)
    if value.shape != shape:
      raise ValueError(f"{source}: param {name!r} has shape {value.shape}, the model expects "
                       f"{shape}")
    return value.astype(sds.dtype)
  return jax.tree_util.tree_map_with_path(pick, abstract)
