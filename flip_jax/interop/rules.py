"""One rule per foreign tensor: which of our params it holds and how the layouts differ.

Our params are addressed by '/'-joined paths ('image/encoder/blocks/0/attn/q/kernel').
PyTorch stores a linear layer as [out, in] where we store [in..., out...] (attention
kernels keep heads and head_dim apart), a patch-embedding conv as [width, 3, p, p]
where we store [p, p, 3, width], and open_clip packs q/k/v into one tensor. A rule
knows both directions, so import and export cannot drift apart, and the foreign shape a
rule expects is derived from ours, so every shape error names the foreign key.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import numpy as np


class ConversionError(ValueError):
  """A one-line reason a conversion was refused, naming the file and the key or option."""


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: tuple[str, ...]
  theirs: str
  # (foreign array, our shapes) -> our arrays; (our arrays) -> foreign array
  to_ours: Callable[[np.ndarray, tuple], tuple]
  to_theirs: Callable[[tuple], np.ndarray]


def copy(ours: str, theirs: str) -> Rule:
  return Rule((ours,), theirs, lambda v, s: (v.reshape(s[0]),), lambda a: a[0])


def linear(ours: str, theirs: str, n_in: int = 1) -> Rule:
  """torch.nn.Linear.weight [out, in] <-> our kernel [in dims (n_in of them)..., out dims...]."""
  def to_theirs(a):
    k = a[0]
    return k.reshape(int(np.prod(k.shape[:n_in])), -1).T
  return Rule((ours,), theirs, lambda v, s: (v.T.reshape(s[0]),), to_theirs)


def bias(ours: str, theirs: str) -> Rule:
  return Rule((ours,), theirs, lambda v, s: (v.reshape(s[0]),), lambda a: a[0].reshape(-1))


def conv_patch(ours: str, theirs: str) -> Rule:
  """Conv2d weight [width, 3, p, p] <-> our patch kernel [p, p, 3, width]."""
  return Rule((ours,), theirs, lambda v, s: (v.transpose(2, 3, 1, 0),),
              lambda a: a[0].transpose(3, 2, 0, 1))


def packed_linear(ours: tuple[str, ...], theirs: str) -> Rule:
  """nn.MultiheadAttention.in_proj_weight [3*D, D] <-> our q, k, v kernels [D, H, hd]."""
  def to_ours(v, shapes):
    return tuple(part.T.reshape(s) for part, s in zip(np.split(v, len(ours)), shapes))
  return Rule(ours, theirs, to_ours,
              lambda a: np.concatenate([k.reshape(k.shape[0], -1).T for k in a]))


def packed_bias(ours: tuple[str, ...], theirs: str) -> Rule:
  def to_ours(v, shapes):
    return tuple(part.reshape(s) for part, s in zip(np.split(v, len(ours)), shapes))
  return Rule(ours, theirs, to_ours, lambda a: np.concatenate([b.reshape(-1) for b in a]))


def foreign_shape(rule: Rule, shapes: tuple) -> tuple:
  return rule.to_theirs(tuple(np.empty(s, np.float32) for s in shapes)).shape


def to_ours(rules: Iterable[Rule], state: Mapping[str, np.ndarray],
            expected: Mapping[str, tuple], *, source: str,
            ignore: Callable[[str], bool] = lambda key: False) -> dict[str, np.ndarray]:
  """Foreign state dict -> our flat float32 params with exactly the `expected` paths/shapes."""
  rules = list(rules)
  known = {r.theirs for r in rules}
  for key in sorted(state):
    if key not in known and not ignore(key):
      raise ConversionError(f"{source}: unexpected key {key!r}: not part of the model "
                            f"its config describes")
  out = {}
  for r in rules:
    if r.theirs not in state:
      raise ConversionError(f"{source}: missing key {r.theirs!r}")
    shapes = tuple(expected[name] for name in r.ours)
    value = np.asarray(state[r.theirs], np.float32)
    want = foreign_shape(r, shapes)
    if value.shape != want:
      raise ConversionError(f"{source}: key {r.theirs!r} has shape {value.shape}, its config "
                            f"implies {want}")
    out.update(zip(r.ours, r.to_ours(value, shapes)))
  missing = sorted(set(expected) - set(out))
  if missing:
    raise ConversionError(f"{source}: nothing provides our param {missing[0]!r}")
  return out


def to_theirs(rules: Iterable[Rule], params: Mapping[str, np.ndarray], *, target: str
              ) -> dict[str, np.ndarray]:
  """Our flat params -> the foreign state dict; every param must have its place."""
  rules = list(rules)
  used = {name for r in rules for name in r.ours}
  extra = sorted(set(params) - used)
  if extra:
    raise ConversionError(f"{target} has no place for our param {extra[0]!r}")
  missing = sorted(used - set(params))
  if missing:
    raise ConversionError(f"the checkpoint lacks param {missing[0]!r} that {target} needs")
  # np.array, not np.ascontiguousarray: the latter turns a 0-d logit_scale into shape (1,).
  return {r.theirs: np.array(r.to_theirs(tuple(np.asarray(params[n], np.float32)
                                               for n in r.ours)), np.float32, order="C")
          for r in rules}
