"""Evaluation of a saved model without the trainer: a training workdir (its newest
checkpoint: params and the objective's non-trained state) or an exported directory
(params only). The model is built by the objective `config.json` names and sharded as
the trainer shards it, so an evaluation here computes what the training loop computed.
"""
from __future__ import annotations

import ast
import os

import jax
import ml_collections
from absl import logging
from flax import nnx

from flip_jax import checkpoint, config_io, model_state, objectives, sharding, trees
from flip_jax.evaluate import base, presets
from flip_jax.interop import ours


def _mesh(config):
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError as err:  # trained on another device count: plain data parallelism
    logging.info("config.mesh does not fit %d devices (%s); using data=-1",
                 jax.device_count(), err)
    return sharding.make_mesh({"data": -1})


def read_config(path: str) -> tuple[ml_collections.ConfigDict, str]:
  """(config, workdir) of a checkpoint, the tokenizer pointed at the one saved with it."""
  workdir = ours.find_workdir(path)
  config = config_io.read(workdir)
  tokenizer_file = os.path.join(workdir, ours.TOKENIZER_FILE)
  if os.path.isfile(tokenizer_file):  # the vocab the model was trained with, offline
    config.tokenizer = tokenizer_file
  return config, workdir


def load_features(path: str, config: ml_collections.ConfigDict, *, device_batch: int = 64
                  ) -> tuple[int, base.Features]:
  """(step, Features) of the newest checkpoint at `path`, placed on a mesh as in training."""
  _, step = checkpoint.find_checkpoint_dir(path)
  objective = objectives.get(config)
  graphdef, abs_params, abs_extra = model_state.split_abstract(objective, config.seed)
  mesh = _mesh(config)
  param_specs, extra_specs = model_state.specs(abs_params, abs_extra, mesh,
                                               config.fsdp_min_size)
  params = trees.fill(nnx.to_pure_dict(abs_params),
                      trees.flatten(checkpoint.load_params(path)), path)
  extra_tree = nnx.to_pure_dict(abs_extra)
  loaded_extra = checkpoint.load_state_entry(path, "extra")
  if loaded_extra is not None:
    extra = trees.fill(extra_tree, trees.flatten(loaded_extra), path)
  elif jax.tree.leaves(extra_tree):
    raise ValueError(f"{path}: holds params only, but objective {config.objective!r} also "
                     f"keeps non-trained state; evaluate its training workdir instead")
  else:
    extra = extra_tree
  state = (model_state.place(params, param_specs, mesh),
           model_state.place(extra, extra_specs, mesh))
  return step, base.Features.of_objective(objective, graphdef, state, mesh, device_batch)


def select(config: ml_collections.ConfigDict, names: list[str] | None,
           overrides: list[str]) -> list[str]:
  """Puts the named evaluations (the config's own, else presets) into config.evals,
  applies 'NAME.KEY=VALUE' overrides, returns the names to run (default: all of the
  config's)."""
  names = list(config.evals.keys()) if not names else names
  with config.unlocked():
    for name in names:
      if name in config.evals:
        continue
      if name not in presets.PRESETS:
        raise ValueError(f"--evals: {name!r} is neither in the checkpoint's config.evals "
                         f"{sorted(config.evals.keys())} nor a preset "
                         f"{sorted(presets.PRESETS)}")
      config.evals[name] = dict(presets.PRESETS[name])
    for item in overrides:
      target, sep, value = item.partition("=")
      name, dot, key = target.partition(".")
      if not sep or not dot or name not in names:
        raise ValueError(f"--set {item!r}: expected NAME.KEY=VALUE with NAME one of {names}")
      config.evals[name] = {**config.evals[name].to_dict(), key: _parse(value)}
  return names


def _parse(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value  # a bare string: a path, a dataset name


def evaluate(path: str, names: list[str] | None = None, overrides=(), *,
             device_batch: int = 64) -> dict:
  """{'checkpoint', 'step', 'results': {name: {metric: value}}}. Evaluators are built
  (data read, keys checked) before the model is loaded."""
  config, workdir = read_config(path)
  names = select(config, names, list(overrides))
  evaluators = base.build(config, workdir, names)
  step, features = load_features(path, config, device_batch=device_batch)
  results = {ev.name: base.run(ev, features) for ev in evaluators}
  return {"checkpoint": os.path.abspath(path), "step": step, "results": results}
