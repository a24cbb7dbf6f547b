"""Our side of every conversion: the params a config implies, and exported directories.

An exported directory is what evaluation and fine-tuning load: config.json, the
tokenizer (tokenizer.json, when the model has one) and an Orbax checkpoint holding only
`{'params': ...}` under checkpoints/<step>/state, the layout of a training workdir, so
`checkpoint.load_params`, `--config.init_from` and `inference.load` read both alike.
It is written into a temporary sibling directory and renamed when complete, so a failed
conversion leaves nothing at the destination.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Callable, Iterable

import jax
import ml_collections
import numpy as np
from flax import nnx

from flip_jax import checkpoint, config_io, trees
from flip_jax.interop.rules import ConversionError
from flip_jax.models import from_config

TOKENIZER_FILE = "tokenizer.json"


def param_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{'image/pos_emb': (65, 64), ...} of the model `config.model` describes (nothing
  allocated), scanned blocks named as unrolled ones (`trees.unstack`)."""
  abstract = nnx.eval_shape(lambda: from_config.build(config, rngs=nnx.Rngs(0),
                                                      dtype=np.float32))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  return {k: tuple(v.shape) for k, v in trees.unstack(trees.flatten(params)).items()}


@contextlib.contextmanager
def output_dir(out: str):
  """Yields a temporary directory that becomes `out` only if the block succeeds."""
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConversionError(f"--out {out}: already exists and is not an empty directory")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
  try:
    yield tmp
    if os.path.isdir(out):
      os.rmdir(out)  # empty, checked above
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@dataclasses.dataclass
class Checkpoint:
  config: ml_collections.ConfigDict
  params: dict[str, np.ndarray]  # flat, '/'-joined paths, blocks unrolled (trees.unstack)
  step: int
  workdir: str  # where config.json (and tokenizer.json, if any) live


def find_workdir(path: str) -> str:
  """The directory holding config.json: `path` itself, or above a checkpoints/<step> dir."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(candidate, config_io.CONFIG_FILE)):
      return candidate
  raise ConversionError(f"{path}: no {config_io.CONFIG_FILE} here or above; expected a "
                        f"training workdir or an exported directory")


def read_tokenizer_json(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """The checkpoint's tokenizer as tokenizer.json text (None when the model has no text)."""
  local = os.path.join(workdir, TOKENIZER_FILE)
  if os.path.isfile(local):
    with open(local) as f:
      return f.read()
  if config.model.type != "two_towers" or not config.get("tokenizer"):
    return None
  from flip_jax.data import tokenizer as tokenizer_lib  # slow import, text models only
  return tokenizer_lib.get_tokenizer(config, workdir).to_str()


def read(path: str, *, drop: Callable[[ml_collections.ConfigDict], Iterable[str]] = (
    lambda config: ())) -> Checkpoint:
  """A training workdir (newest step) or an exported directory, less the top-level param
  subtrees that `drop(config)` names (e.g. `objectives.training_only_params`); scanned
  blocks read as unrolled ones."""
  workdir = find_workdir(path)
  config = config_io.read(workdir)
  try:
    _, step = checkpoint.find_checkpoint_dir(path)
  except FileNotFoundError as err:
    raise ConversionError(str(err)) from None
  dropped = tuple(drop(config))
  flat = trees.unstack(trees.flatten(checkpoint.load_params(path)))
  params = {k: np.asarray(v) for k, v in flat.items() if k.split("/")[0] not in dropped}
  return Checkpoint(config, params, step, workdir)


def check_params(params: dict[str, np.ndarray], config: ml_collections.ConfigDict, *,
                 source: str) -> None:
  """Same names and shapes as the model `config` describes, or a one-line error."""
  expected = param_shapes(config)
  for name in sorted(set(expected) | set(params)):
    if name not in params:
      raise ConversionError(f"{source}: has no param {name!r}, which its config implies")
    if name not in expected:
      raise ConversionError(f"{source}: param {name!r} is not part of the model its config "
                            f"describes")
    if tuple(params[name].shape) != expected[name]:
      raise ConversionError(f"{source}: param {name!r} has shape {params[name].shape}, its "
                            f"config implies {expected[name]}")


def write_exported(out: str, *, params: dict[str, np.ndarray],
                   config: ml_collections.ConfigDict, step: int = 0,
                   tokenizer_json: str | None = None) -> str:
  """Writes an exported directory at `out` (see the module docstring); returns its path.
  Scanned blocks are written unrolled (`trees.unstack`), whichever layout `params` has."""
  params = trees.unstack(params)
  check_params(params, config, source="the converted weights")
  with output_dir(out) as tmp:
    mgr = checkpoint.manager(tmp, every_steps=1, keep=1, use_async=False)
    tree = jax.tree.map(lambda x: np.asarray(x, np.float32), trees.unflatten(params))
    checkpoint.save(mgr, step, {"params": tree}, force=True)
    mgr.wait_until_finished()
    mgr.close()
    config_io.write(config, tmp)
    if tokenizer_json is not None:
      with open(os.path.join(tmp, TOKENIZER_FILE), "w") as f:
        f.write(tokenizer_json)
  return os.path.abspath(out)
