"""An objective's model as the trainer and standalone evaluation both see it: a graph,
the trained params (`nnx.Param`) and everything else ("extra": frozen teachers, EMA
weights), with their shardings on a mesh. Imports no objective, trainer or evaluator.
"""
from __future__ import annotations

import jax
from flax import nnx

from flip_jax import sharding


def split_abstract(objective, seed: int):
  """(graphdef, abstract params, abstract extra) of `objective.build`; nothing allocated."""
  abstract = nnx.eval_shape(lambda: objective.build(nnx.Rngs(seed)))
  return nnx.split(abstract, nnx.Param, ...)


def specs(abstract_params, abstract_extra, mesh, min_size: int):
  """PartitionSpecs (pure dicts) of params and extra by the logical-axis rules."""
  return (sharding.param_specs(abstract_params, mesh, min_size=min_size),
          sharding.param_specs(abstract_extra, mesh, min_size=min_size))


def place(tree: dict, specs_tree, mesh) -> dict:
  """Host numpy (the same on every process) -> global arrays with these specs; each
  process copies only its devices' slices (device_put cannot target other hosts)."""
  def put(value, spec):
    return jax.make_array_from_callback(value.shape, jax.NamedSharding(mesh, spec),
                                        lambda index: value[index])
  return jax.tree.map(put, tree, specs_tree)
