"""Collectives in an optimized (post-SPMD) HLO module: how many, how big, what traffic.

Reads `compiled.as_text()`. Counted are the collective instructions of the computations
that run as control flow (the entry, and while/conditional/call bodies, a while body
once per trip: see `trip_count`); fused computations are reached only through the
fusion that calls them. The TPU compiler turns a reduce-scatter into a fusion around an
all-reduce (a computation named `all-reduce-scatter*`), so such a fusion is counted as
one reduce-scatter of its input.

Traffic per device uses the bandwidth-optimal ring volumes over a group of n devices:
all-gather and reduce-scatter move (n-1)/n of the full (gathered / unreduced) array,
all-reduce twice that, all-to-all (n-1)/n of its array, collective-permute all of it.
"""
from __future__ import annotations

import math
import re
from typing import Iterable

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
          "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
          "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e\dm\d(?:fn)?)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \((.*)\) -> .* \{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_CALLEES = re.compile(r"\b(body|condition|to_apply|calls)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_TRUE_FALSE = re.compile(r"\b(?:true|false)_computation=%([\w.\-]+)")


_CONSTANT = re.compile(r"^\s*%([\w.\-]+) = s32\[\]\S* constant\((\d+)\)")
_LESS_THAN = re.compile(r"^\s*ROOT %[\w.\-]+ = pred\[\]\S* compare\(%[\w.\-]+, %([\w.\-]+)\)"
                        r".*direction=LT")


def trip_count(attrs: str, bodies: dict) -> int:
  """How many times a while loop runs: its `known_trip_count` (GPU, CPU), else the bound
  of a condition `counter < N` with N a constant (the TPU compiler's text of a
  `jax.lax.scan`, whose counter starts at 0); 1 when neither says."""
  known = _TRIP.search(attrs)
  if known:
    return int(known.group(1))
  condition = dict(_CALLEES.findall(attrs)).get("condition")
  lines = bodies.get(condition, [])
  constants = dict(m.groups() for m in map(_CONSTANT.match, lines) if m)
  for line in lines:
    bound = _LESS_THAN.match(line)
    if bound and bound.group(1) in constants:
      return int(constants[bound.group(1)])
  return 1


def branches(attrs: str) -> list[str]:
  """The computations a conditional may run: `branch_computations={...}` (TPU) or
  `true_computation=` / `false_computation=` (GPU)."""
  listed = _BRANCHES.search(attrs)
  if listed:
    return re.findall(r"%([\w.\-]+)", listed.group(1))
  return _TRUE_FALSE.findall(attrs)


def array_shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array type written in `text` (a shape or a signature)."""
  return [(dt, tuple(int(d) for d in dims.split(",") if d))
          for dt, dims in _ARRAY.findall(text) if dt in _BYTES]


def nbytes(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> int:
  return sum(_BYTES[dt] * math.prod(dims) for dt, dims in shapes)


def group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group, from any of the printed replica_groups forms."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\].*?\{([^}]*)\}", attrs)
  if mesh:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2)))
  iota = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)
  if iota:
    return int(iota.group(1).split(",")[-1])
  listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
  if listed:
    return len(listed.group(1).split(","))
  return num_devices  # replica_groups={}: one group of every device


def _computations(hlo: str) -> tuple[dict, dict, str]:
  """name -> instruction lines, name -> parameter signature, and the entry's name."""
  bodies, signatures, entry, current = {}, {}, None, None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      bodies[current], signatures[current] = [], header.group(2)
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      bodies[current].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return bodies, signatures, entry


def executed(hlo: str):
  """(bodies, [(result, opcode, rest, times)]): every instruction of the computations that
  run as control flow (the entry; while bodies `trip_count` times; called and
  conditional computations), with how many times it runs. Fusions are not entered."""
  bodies, _, entry = _computations(hlo)
  return bodies, _walk(bodies, entry)


def _walk(bodies: dict, entry: str) -> list[tuple[str, str, str, int]]:
  found = []

  def walk(name, times):
    for line in bodies[name]:
      instr = _INSTR.match(line)
      if not instr:
        continue
      result, opcode, rest = instr.groups()
      found.append((result, opcode, rest, times))
      callees = dict(_CALLEES.findall(rest))
      if opcode == "while":
        walk(callees["body"], times * trip_count(rest, bodies))
      elif opcode == "call":
        walk(callees["to_apply"], times)
      elif opcode == "conditional":
        for branch in branches(rest):
          walk(branch, times)

  walk(entry, 1)
  return found


def _base_kind(opcode: str) -> str | None:
  kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
  return kind if kind in KINDS else None


def collectives(hlo: str, num_devices: int) -> list[dict]:
  """One record per executed collective: kind, bytes (the full array it gathers,
  reduces or sends), group size, traffic (bytes each device sends), result dims."""
  bodies, signatures, entry = _computations(hlo)
  found: list[dict] = []

  def record(kind, shapes, attrs, times):
    n = group_size(attrs, num_devices)
    size = nbytes(shapes)
    factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(kind, (n - 1) / n)
    for _ in range(times):
      found.append(dict(kind=kind, bytes=size, group=n, traffic=size * factor,
                        dims=[d for _, d in shapes]))

  for result, opcode, rest, times in _walk(bodies, entry):
    kind = _base_kind(opcode)
    if kind:
      shapes = array_shapes(result)
      if opcode in ("all-gather-start", "collective-permute-start"):
        # The async tuple holds (operands, results, [context]); the GPU compiler
        # combines several all-gathers into one start with n operands.
        n = rest[:rest.index(")")].count("%")
        shapes = shapes[n:2 * n]
      if kind == "reduce-scatter":  # count the unreduced input: the result times n
        n, axis = group_size(rest, num_devices), int(re.search(r"dimensions=\{(\d+)", rest)[1])
        shapes = [(dt, d[:axis] + (d[axis] * n,) + d[axis + 1:]) for dt, d in shapes]
      record(kind, shapes, rest, times)
      continue
    calls = dict(_CALLEES.findall(rest)).get("calls", "")
    if opcode == "fusion" and calls.startswith("all-reduce-scatter"):
      inner = next(l for l in bodies[calls] if " all-reduce(" in l)
      record("reduce-scatter", array_shapes(signatures[calls]), inner, times)
  return found


def summarize(records: list[dict]) -> dict[str, dict[str, float]]:
  """count / bytes / traffic per kind (every kind present, zeros included)."""
  out = {k: {"count": 0, "bytes": 0, "traffic": 0.0} for k in KINDS}
  for r in records:
    s = out[r["kind"]]
    s["count"] += 1
    s["bytes"] += r["bytes"]
    s["traffic"] += r["traffic"]
  return out
