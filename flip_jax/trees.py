"""Param trees by name: each leaf is known by its '/'-joined path ('image/encoder/blocks/0/
ln1/scale'), the name checkpoints, exports and regex parameter groups use. Imports nothing
of ours.

Scanned towers store their blocks stacked ('image/encoder/blocks/stacked/ln1/scale', one
array with the block index as its leading axis, `models.layers.Stacked`); `unstack`
names them as unrolled blocks, the one layout exports and converters speak, and `fill`
reads either layout into either kind of model."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P


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


STACKED = "stacked"  # a path segment: the leaves below it carry a leading layer axis


def unstack(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/stacked/b': [L, ...]} -> {'a/0/b': [...], ..., 'a/<L-1>/b': [...]}; other names
  unchanged. Values are arrays or ShapeDtypeStructs."""
  out = {}
  for name, value in flat.items():
    parts = name.split("/")
    if STACKED not in parts:
      out[name] = value
      continue
    k = parts.index(STACKED)
    for i in range(value.shape[0]):
      out["/".join(parts[:k] + [str(i)] + parts[k + 1:])] = (
          jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
          if isinstance(value, jax.ShapeDtypeStruct) else value[i])
  return out


def _restacked(name: str, shape: tuple, flat: Mapping[str, Any], source: str):
  """The leaf `name` (with a 'stacked' segment) gathered from unrolled names in `flat`."""
  parts = name.split("/")
  k = parts.index(STACKED)
  values = []
  for i in range(shape[0]):
    layer = "/".join(parts[:k] + [str(i)] + parts[k + 1:])
    if layer not in flat:
      raise ValueError(f"{source}: has no param {layer!r}, which the model needs")
    values.append(np.asarray(flat[layer]))
  return np.stack(values)


def fill(abstract, flat: Mapping[str, Any], source: str, *, prefix: str = "",
         adapt: Callable[[str, np.ndarray, tuple], np.ndarray] | None = None):
  """`abstract` (a tree of shape structs) with every leaf taken from `flat` by its name
  (`prefix/` + name when `prefix`), as host numpy of the leaf's dtype. Either layout of
  scanned blocks fills either kind of model (see the module doc). A leaf of another
  shape goes through `adapt(name, value, shape)` when given (e.g. resampling position
  embeddings); a missing name or a shape still different is an error naming `source`."""
  flat = unstack(flat)

  def pick(path, sds):
    name = "/".join(filter(None, (prefix, path_name(path))))
    shape = tuple(sds.shape)
    if STACKED in name.split("/"):
      value = _restacked(name, shape, flat, source)
    elif name not in flat:
      raise ValueError(f"{source}: has no param {name!r}, which the model needs")
    else:
      value = np.asarray(flat[name])
    if value.shape != shape and adapt is not None:
      value = adapt(name, value, shape)
    if value.shape != shape:
      raise ValueError(f"{source}: param {name!r} has shape {value.shape}, the model expects "
                       f"{shape}")
    return value.astype(sds.dtype)
  return jax.tree_util.tree_map_with_path(pick, abstract)


def _prefixes(names) -> set[str]:
  out = set()
  for name in names:
    parts = name.split("/")
    out.update("/".join(parts[:i]) for i in range(1, len(parts)))
  return out


def _is_layer_list(node) -> bool:
  return isinstance(node, dict) and bool(node) and all(str(k).isdigit() for k in node)


def _layer_axis(sds, layers: int | None):
  """`sds` with a leading layer axis of `layers` added (unsharded), or removed (None)."""
  sharding = getattr(sds, "sharding", None)
  shape = (layers,) + tuple(sds.shape) if layers else tuple(sds.shape[1:])
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(sds.shape) - len(sharding.spec))
    sharding = NamedSharding(sharding.mesh, P(*((None,) + spec if layers else spec[1:])))
  return jax.ShapeDtypeStruct(shape, sds.dtype, sharding=sharding)


def as_layout(abstract, names) -> Any:
  """`abstract` (a tree of ShapeDtypeStructs, sharded or not) with its scanned blocks laid
  out as in the tree whose leaf names are `names` (a checkpoint's): stacked where those
  are stacked, unrolled where they are unrolled; the layer axis is never sharded."""
  prefixes = _prefixes(names)

  def walk(node, path):
    if isinstance(node, dict):
      stacked_there = f"{path}/{STACKED}" in prefixes
      if set(node) == {STACKED} and not stacked_there and f"{path}/0" in prefixes:
        layers = jax.tree.leaves(node[STACKED])[0].shape[0]
        one = jax.tree.map(lambda s: _layer_axis(s, None), node[STACKED])
        return {i: one for i in range(layers)}
      if _is_layer_list(node) and stacked_there:
        keys = sorted(node, key=int)
        return {STACKED: jax.tree.map(lambda s: _layer_axis(s, len(keys)), node[keys[0]])}
      return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
      keys = getattr(node, "_fields", range(len(node)))  # as a key path names them
      items = [walk(v, f"{path}/{k}" if path else str(k)) for k, v in zip(keys, node)]
      return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
    return node
  return walk(abstract, "")


def relayout(tree, target) -> Any:
  """`tree`'s values in `target`'s layout of scanned blocks: layers stacked where target
  holds them stacked and `tree` unrolled, sliced where the other way round (traceable)."""
  if isinstance(target, dict):
    if set(target) == {STACKED} and _is_layer_list(tree):
      layers = [tree[k] for k in sorted(tree, key=int)]
      return {STACKED: jax.tree.map(lambda *x: jnp.stack(x), *layers)}
    if _is_layer_list(target) and isinstance(tree, dict) and set(tree) == {STACKED}:
      return {k: jax.tree.map(lambda x, i=i: x[i], tree[STACKED])
              for i, k in enumerate(sorted(target, key=int))}
    return {k: relayout(tree[k], target[k]) for k in target}
  if isinstance(target, (list, tuple)):
    items = [relayout(a, b) for a, b in zip(tree, target)]
    return type(target)(*items) if hasattr(target, "_fields") else type(target)(items)
  return tree
