"""Orbax checkpoints of the train state and the data iterator, auto-resumed from the workdir.

A checkpoint holds two items: `state` (step, params, extra = frozen/EMA variables,
optimizer state; saved sharded, restored straight onto the mesh) and `data` (the grain
iterator position of every host), so a resumed run sees exactly the batches it would
have seen. Orbax writes into a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and
renames it when complete, so a crash mid-save leaves the previous checkpoint as the latest
usable one; the next start deletes such leftovers and never reads them.
On several hosts every process calls the same functions: each writes its shards of the
arrays and its own iterator state, process 0 commits the step.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from grain import checkpoint as grain_ckpt

from flip_jax import trees

CKPT_DIR = "checkpoints"


def manager(workdir: str, *, every_steps: int, keep: int, use_async: bool = True
            ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every_steps, max_to_keep=keep, create=True,
      enable_async_checkpointing=use_async, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CKPT_DIR),
                               options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter=None, *,
         force: bool = False) -> bool:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mgr: ocp.CheckpointManager, abstract_state: Any, data_iter=None,
            step: int | None = None) -> Any:
  """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs). A state
  saved with other towers scanned (blocks stacked) or unrolled is read in its own layout
  and converted on the devices (`trees.relayout`), so a run resumes either way."""
  step = mgr.latest_step() if step is None else step
  saved_names = trees.flatten(_state_metadata(str(mgr.directory), step))
  saved = trees.as_layout(abstract_state, saved_names)
  items = {"state": ocp.args.StandardRestore(saved)}
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointRestore(data_iter)
  state = mgr.restore(step, args=ocp.args.Composite(**items))["state"]
  if jax.tree.structure(saved) == jax.tree.structure(abstract_state):
    return state
  shardings = jax.tree.map(lambda s: s.sharding, abstract_state)
  return jax.jit(lambda s: trees.relayout(s, abstract_state), out_shardings=shardings)(state)


def _state_metadata(ckpt_dir: str, step: int):
  """The tree of array metadata of a checkpoint's `state` item."""
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.metadata(os.path.join(ckpt_dir, str(step), "state")).item_metadata.tree


def find_checkpoint_dir(path: str) -> tuple[str, int]:
  """A workdir, its checkpoints/ dir or one step dir -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, CKPT_DIR), path):
    if os.path.isdir(candidate):
      steps = ocp.utils.checkpoint_steps(candidate)
      if steps:
        return candidate, max(steps)
  parent, name = os.path.split(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return parent, int(name)
  raise FileNotFoundError(f"no Orbax checkpoint found under {path!r}")


def load_params(path: str) -> dict:
  """Params (host numpy) of the newest checkpoint at `path`; the optimizer state is not read."""
  params = load_state_entry(path, "params")
  if params is None:
    raise FileNotFoundError(f"{path}: the checkpoint holds no params")
  return params


def load_state_entry(path: str, key: str) -> dict | None:
  """One entry of the newest checkpoint's state ('params', 'extra') as host numpy;
  None when the checkpoint has no such entry (an exported one holds only params)."""
  ckpt_dir, step = find_checkpoint_dir(path)
  logging.info("loading %s from %s step %d", key, ckpt_dir, step)
  state_dir = os.path.join(ckpt_dir, str(step), "state")
  meta = _state_metadata(ckpt_dir, step)
  with ocp.PyTreeCheckpointer() as ckptr:
    if key not in meta:
      return None
    if not jax.tree.leaves(meta[key]):
      return {}  # e.g. an objective without non-trained state: nothing to restore
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                meta[key])
    out = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={key: meta[key]}, restore_args={key: restore_args}, partial_restore=True))
  return out[key]
