"""What XLA's cost analysis leaves out of a step with scanned layers.

XLA's HLO cost analysis counts a while loop's body once, whatever its trip count, so a
step whose towers run under `jax.lax.scan` (`model.*.scan`) reports the FLOPs and bytes
of one layer where there are `depth`. The planner adds the other iterations:

- FLOPs: the matmuls (`dot_general`, convolutions) of the traced step's jaxpr, where a
  scan's body counts `length` times and the backward pass's recomputation (remat)
  appears as the ops it runs; the correction is what those add beyond one pass through
  each scan, split evenly over the devices. Elementwise work inside the loops is not
  added (a few % of a transformer layer's FLOPs).
- Bytes: each loop body's top-level instructions in the optimized HLO (fusions, copies,
  collectives: what reads and writes memory), operands plus results, times the trip
  count less one, as XLA counts bytes for an instruction outside a loop; of an array
  stacked over the iterations (leading dim = trip count) one slice counts.

Without scanned layers both corrections are 0 and the plan is XLA's figures unchanged.
"""
from __future__ import annotations

import math
import re

import jax
from jax.extend import core as jex_core

from flip_jax import hlo_stats

# Instructions that move no data of their own.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "partition-id", "replica-id", "opt-barrier", "while", "conditional", "call"}


def _sub_jaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / rhs[out_feature]
  return 0.0


def matmul_flops(jaxpr, scan_trips: bool = True) -> float:
  """Matmul FLOPs of a jaxpr, a scan's body `length` times (once if not `scan_trips`),
  a conditional's costliest branch, a while loop's body once (its trip count is not
  known here)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    subs = [matmul_flops(j, scan_trips) for j in _sub_jaxprs(eqn.params)]
    if eqn.primitive.name == "scan":
      total += (eqn.params["length"] if scan_trips else 1) * sum(subs)
    elif eqn.primitive.name == "cond":
      total += max(subs, default=0.0)
    else:
      total += sum(subs) + _eqn_flops(eqn)
  return total


def extra_flops(jaxpr, num_devices: int) -> float:
  """Per-device matmul FLOPs of the scan iterations beyond the first (see module doc)."""
  return (matmul_flops(jaxpr) - matmul_flops(jaxpr, scan_trips=False)) / num_devices


def _instruction_shapes(body: list[str]) -> dict[str, list]:
  """name -> result array shapes of every instruction of a computation."""
  shapes = {}
  for line in body:
    instr = hlo_stats._INSTR.match(line)  # noqa: SLF001 - the same HLO text reader
    if instr:
      name = line.split("=", 1)[0].strip().removeprefix("ROOT ").lstrip("%")
      shapes[name] = hlo_stats.array_shapes(instr.group(1))
  return shapes


def _touched(shapes, trips: int) -> float:
  """Bytes an iteration touches of these arrays: one slice of an array stacked over the
  loop's iterations (leading dim = trip count: the stacked params, the residuals saved for
  the backward pass), which a dynamic-(update-)slice reads or writes, else all of it."""
  return sum(hlo_stats.nbytes([(dt, dims)]) / (trips if dims and dims[0] == trips else 1)
             for dt, dims in shapes)


def _body_bytes(body: list[str], trips: int) -> float:
  shapes = _instruction_shapes(body)
  total = 0.0
  for line in body:
    instr = hlo_stats._INSTR.match(line)  # noqa: SLF001
    if not instr or instr.group(2) in _FREE:
      continue
    result, _, rest = instr.groups()
    total += _touched(hlo_stats.array_shapes(result), trips)
    total += sum(_touched(shapes.get(name, []), trips) for name in _operand_names(rest))
  return total


def _operand_names(rest: str) -> list[str]:
  """The instructions an instruction reads: the %names before its first attribute."""
  operands = re.sub(r"/\*.*?\*/", "", rest).split("=", 1)[0]
  return re.findall(r"%([\w.\-]+)", operands)


def extra_bytes(hlo: str) -> float:
  """Per-device bytes of the loop iterations beyond the first, from the optimized HLO of
  one device's program (see module doc)."""
  bodies, instructions = hlo_stats.executed(hlo)
  extra = 0.0
  for _, opcode, rest, times in instructions:
    if opcode == "while":
      n = hlo_stats.trip_count(rest, bodies)
      body = dict(hlo_stats._CALLEES.findall(rest))["body"]  # noqa: SLF001
      extra += times * (n - 1) * _body_bytes(bodies[body], n)
  return extra


def correct(cost: dict, jaxpr: jax.extend.core.Jaxpr, hlo: str, num_devices: int) -> dict:
  """`cost` ({'flops', 'bytes accessed', ...} per device) with the loop iterations XLA
  left out added, and what was added as `loop_flops_added` / `loop_bytes_added`."""
  flops, moved = extra_flops(jaxpr, num_devices), extra_bytes(hlo)
  return dict(cost, flops=cost["flops"] + flops, **{"bytes accessed":
                                                      cost["bytes accessed"] + moved},
              loop_flops_added=flops, loop_bytes_added=moved)
