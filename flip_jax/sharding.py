"""Mesh construction and the one table that maps logical axis names onto mesh axes.

Params and activations are annotated with logical names ('batch', 'embed', 'mlp', ...);
`RULES` says which mesh axes each may use. A mesh axis is used at most once per array
(first logical dim wins), so the same names serve params (embed -> fsdp) and
activations (batch takes fsdp first, embed then stays unsharded). Nothing here knows
about any method.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from flip_jax import trees

MESH_AXES = ("data", "fsdp", "tensor")
LAYERS = "layers"  # the leading axis of a scanned tower's stacked params: never sharded

# logical name -> mesh axes it may be sharded over, in order of preference.
RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv": (),
    "vocab": ("tensor",),
    "length": (),
}


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves the one -1 entry so the product equals the device count."""
  sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
  unknown = [a for a, s in sizes.items() if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(sizes)}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(sizes)}")
  if unknown:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(sizes)} does not divide {num_devices} devices")
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config.mesh {dict(sizes)} needs {math.prod(sizes.values())} devices, "
                     f"have {num_devices}")
  return sizes


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils  # topology-aware device order on TPU
    arr = mesh_utils.create_device_mesh(tuple(shape.values()), devices)
  except (ValueError, NotImplementedError, AssertionError):
    arr = np.asarray(devices, dtype=object).reshape(tuple(shape.values()))
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, *, min_size: int = 0) -> P:
  """PartitionSpec for an array with these logical axes.

  With `mesh` and `shape`, a mesh axis is only used where it divides the dimension, and
  arrays smaller than `min_size` elements are not split over 'fsdp' (tiny params are
  cheaper replicated than gathered); for stacked layers (a leading 'layers' axis, which no
  rule shards) that is the size of one layer's slice.
  """
  used: set[str] = set()
  spec = []
  per_layer = shape[1:] if shape is not None and axes and axes[0] == LAYERS else shape
  small = shape is not None and math.prod(per_layer) < min_size
  for i, name in enumerate(axes):
    chosen = []
    for mesh_axis in RULES.get(name, ()) if name else ():
      if mesh_axis in used or (small and mesh_axis == "fsdp"):
        continue
      if mesh is not None:
        size = mesh.shape[mesh_axis]
        if size == 1:
          continue
        if shape is not None and shape[i] % (size * math.prod(mesh.shape[a] for a in chosen)):
          continue
      chosen.append(mesh_axis)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return P(*spec)


def constrain(x, axes: Sequence[str | None]):
  """with_sharding_constraint by logical names under the current mesh; no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


def param_specs(abstract_state, mesh: Mesh, *, min_size: int = 0):
  """PartitionSpecs, as a pure dict, for an nnx State whose Variables carry `axes` metadata."""

  def spec(v):
    axes = getattr(v, "axes", None) or (None,) * len(v.shape)
    return logical_to_spec(axes, v.shape, mesh, min_size=min_size)

  specs = jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs)


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_spec(ndim: int) -> P:
  return P(RULES["batch"], *([None] * (ndim - 1)))


def global_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local numpy arrays (this host's rows) -> global jax.Arrays sharded over the batch."""
  out = {}
  for k, v in local_batch.items():
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec(v.ndim)), v)
  return out


def data_parallel_size(mesh_config: Mapping[str, int], num_devices: int) -> int:
  s = mesh_shape(mesh_config, num_devices)
  return s["data"] * s["fsdp"]


def specs_like(tree, reference_specs, reference_tree):
  """Specs for a tree whose leaves mirror some reference leaves (optimizer moments, EMA).

  A leaf takes the spec of the reference leaf whose path is a suffix of its own path and
  whose shape equals its own; anything else (step counts, scalars) is replicated.
  """
  ref = {}
  leaves = jax.tree_util.tree_flatten_with_path(reference_tree)[0]
  spec_leaves = jax.tree.leaves(reference_specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), spec in zip(leaves, spec_leaves):
    ref[tuple(trees.path_name(path).split("/"))] = (tuple(leaf.shape), spec)

  def pick(path, leaf):
    keys = tuple(trees.path_name(path).split("/"))
    for start in range(len(keys)):
      hit = ref.get(keys[start:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return P()

  return jax.tree_util.tree_map_with_path(pick, tree)
