"""Param trees by name: each leaf is known by its '/'-joined path ('image/encoder/blocks/0/
ln1/scale'), the name checkpoints, exports and regex parameter groups use. Imports nothing
of ours.

Scanned towers store their blocks stacked ('image/encoder/blocks/stacked/ln1/scale', one
array with the block index as its leading axis, `models.layers.Stacked`); `unstack`
names them as unrolled blocks, the one layout exports and converters speak, and `fill`
reads either layout into either kind of model. A list may also hold a stacked group
beside unrolled entries: 'stacked_<first>_<stride>' (SwinV2's scanned (plain, shifted)
pairs: 'blocks/stacked_4_2/1/attn/...' at index p is block 4 + 2p + 1). A group covers
its list's consecutive entries up to the next key's."""
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


def stacked_group(segment: str) -> tuple[int, int] | None:
  """(first, stride) of a stacked path segment: 'stacked' -> (0, 1), 'stacked_4_2' ->
  (4, 2) (entry p, member k is layer first + stride*p + k); None for other segments."""
  if segment == STACKED:
    return 0, 1
  parts = segment.split("_")
  if len(parts) == 3 and parts[0] == STACKED and parts[1].isdigit() and parts[2].isdigit():
    return int(parts[1]), int(parts[2])
  return None


def group_key(first: int, stride: int) -> str:
  return f"{STACKED}_{first}_{stride}"


def is_stacked(name: str) -> bool:
  """Whether the leaf `name` carries a leading layer axis."""
  return any(stacked_group(seg) for seg in name.split("/"))


def _layer_name(name: str, p: int) -> str:
  """The unrolled name of layer slice p of the stacked leaf `name`."""
  parts = name.split("/")
  j = next(j for j, seg in enumerate(parts) if stacked_group(seg))
  first, stride = stacked_group(parts[j])
  if stride == 1:
    return "/".join(parts[:j] + [str(first + p)] + parts[j + 1:])
  return "/".join(parts[:j] + [str(first + stride * p + int(parts[j + 1]))] + parts[j + 2:])


def unstack(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/stacked/b': [L, ...]} -> {'a/0/b': [...], ..., 'a/<L-1>/b': [...]} (and groups,
  see the module doc); other names unchanged. Values are arrays or ShapeDtypeStructs."""
  out = {}
  for name, value in flat.items():
    if not is_stacked(name):
      out[name] = value
      continue
    for p in range(value.shape[0]):
      out[_layer_name(name, p)] = (jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
                                   if isinstance(value, jax.ShapeDtypeStruct) else value[p])
  return out


def _restacked(name: str, shape: tuple, flat: Mapping[str, Any], source: str):
  """The stacked leaf `name` gathered from unrolled names in `flat`."""
  values = []
  for p in range(shape[0]):
    layer = _layer_name(name, p)
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
    if is_stacked(name):
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


def _children(names) -> dict[str, set[str]]:
  """path -> the segments right below it, over every leaf name."""
  out: dict[str, set[str]] = {}
  for name in names:
    parts = name.split("/")
    for i in range(len(parts)):
      out.setdefault("/".join(parts[:i]), set()).add(parts[i])
  return out


def _is_layer_key(key) -> bool:
  return str(key).isdigit() or stacked_group(str(key)) is not None


def _is_layer_list(node) -> bool:
  """A list of layers as a param tree holds it: keys that are indices or stacked groups."""
  return isinstance(node, dict) and bool(node) and all(_is_layer_key(k) for k in node)


def _unrolled(node: dict, take: Callable) -> dict[int, Any]:
  """A layer list's entries by layer index; a stacked group's slice p is take(leaf, p)."""
  out = {}
  for key, sub in node.items():
    group = stacked_group(str(key))
    if group is None:
      out[int(key)] = sub
      continue
    first, stride = group
    n = jax.tree.leaves(sub)[0].shape[0]
    for k, member in (sub.items() if stride > 1 else [(0, sub)]):
      for p in range(n):
        out[first + stride * p + int(k)] = jax.tree.map(lambda x, p=p: take(x, p), member)
  return out


def _grouped(unrolled: dict[int, Any], keys, stack: Callable) -> dict | None:
  """`unrolled` laid out under a layer list's `keys`: an index key takes its layer, a
  stacked group `stack`s the consecutive layers up to the next key's. None when the keys
  do not lay out exactly these layers (another depth: nothing to convert)."""
  starts = sorted(int(k) if str(k).isdigit() else stacked_group(str(k))[0] for k in keys)
  end = max(unrolled) + 1
  layout = {}
  for key in keys:
    group = stacked_group(str(key))
    if group is None:
      layout[key] = [[int(key)]]
      continue
    first, stride = group
    n = (next((s for s in starts if s > first), end) - first) // stride
    layout[key] = [[first + stride * p + k for p in range(n)] for k in range(stride)]
  layers = [i for members in layout.values() for m in members for i in m]
  if sorted(layers) != sorted(unrolled):
    return None

  def stacked(indices):
    return jax.tree.map(lambda *x: stack(x), *[unrolled[i] for i in indices])

  out = {}
  for key, members in layout.items():
    if stacked_group(str(key)) is None:
      out[key] = unrolled[members[0][0]]
    elif len(members) == 1:  # stride 1: the layers themselves
      out[key] = stacked(members[0])
    else:  # one stack per member of the group
      out[key] = {k: stacked(m) for k, m in enumerate(members)}
  return out


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
  children = _children(names)

  def walk(node, path):
    if isinstance(node, dict):
      theirs = children.get(path, set())
      if (_is_layer_list(node) and theirs and all(map(_is_layer_key, theirs))
              and theirs != {str(k) for k in node}):
        # Index keys as ints (a list's), unless a group's string key sits beside them.
        grouped = any(stacked_group(k) for k in theirs)
        keys = [k if grouped or not k.isdigit() else int(k) for k in theirs]
        laid = _grouped(_unrolled(node, lambda s, _: _layer_axis(s, None)), keys,
                        lambda xs: _layer_axis(xs[0], len(xs)))
        if laid is not None:  # else the restore names what the checkpoint lacks
          return laid
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
    if (_is_layer_list(target) and _is_layer_list(tree)
            and {str(k) for k in tree} != {str(k) for k in target}):
      laid = _grouped(_unrolled(tree, lambda x, p: x[p]), list(target), jnp.stack)
      if laid is None:
        raise ValueError(f"layers {sorted(map(str, tree))} cannot be laid out as "
                         f"{sorted(map(str, target))}")
      return laid
    return {k: relayout(tree[k], target[k]) for k in target}
  if isinstance(target, (list, tuple)):
    items = [relayout(a, b) for a, b in zip(tree, target)]
    return type(target)(*items) if hasattr(target, "_fields") else type(target)(items)
  return tree
