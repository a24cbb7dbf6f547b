"""Where a compiled step's time goes: a `jax.profiler` trace of the step, its ops summed
into categories.

The trace records one event per executed HLO op (XLA:CPU runs the program as a sequence
of thunks, each a fusion or a single op, and annotates each with `hlo_op`/`hlo_module`).
Each op is put in one category from the optimised HLO of the same executable: what ops
its fusion contains and the name scope jax recorded for them (`op_name` metadata; the
model marks its parts with `jax.named_scope`, see SCOPES), first match wins:

  optimizer     the gradient-free tail (`Trainer.apply_gradients`: AdamW, norms, guard)
  attention     the attention core: q·kᵀ, softmax, ·v and their gradients
  matmul        any other op with a dot or a convolution (projections, MLP, patches, loss)
  norm          LayerNorm, forward and backward
  activation    the MLP's activation (GELU), forward and backward
  layout        ops that only move data: transpose, copy, concatenate, slice, pad, ...
  reduction     other ops with a reduce (bias gradients, residual-stream sums, ...)
  other         the rest: elementwise ops, gathers/scatters (embedding lookups), RNG, ...

An op that XLA fused with a neighbour of another category counts once, in the first
category it matches (e.g. a LayerNorm fused into the matmul that reads it is `matmul`).
Seconds are per step (the trace's total divided by the number of traced steps); where
ops overlap in time (concurrent thunks), each instant is split evenly between them, so
the categories add up to the time in which any op of the step ran. Control-flow ops
(while, conditional, call) are not counted themselves: the ops they run are.
"""
from __future__ import annotations

import collections
import glob
import re
import resource
import tempfile
import time

import jax

CATEGORIES = ("matmul", "attention", "norm", "activation", "layout", "reduction", "optimizer",
              "other")
# jax.named_scope names the model and trainer put around their parts.
SCOPES = {"attention": "attention_core", "norm": "layer_norm", "activation": "mlp_activation",
          "optimizer": "optimizer_update"}
MATMUL_OPS = {"dot", "convolution"}
LAYOUT_OPS = {"transpose", "copy", "reshape", "bitcast", "broadcast", "concatenate", "slice",
              "pad", "dynamic-slice", "dynamic-update-slice", "reverse", "copy-start",
              "copy-done", "parameter", "constant", "tuple", "get-tuple-element",
              "bitcast-convert"}
CONTROL_OPS = {"while", "conditional", "call"}
# Integer scalar results: loop counters and slice offsets, which `parse_hlo` records as
# "index-<opcode>" so that an op moving data at a computed offset stays `layout`.
_INDEX_RESULT = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?:[su](?:8|16|32|64)|pred)\[\]\s")

_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|"
                    r"true_computation|false_computation)=\{?([^}]*?)\}?(?:,\s*\w+=|$|\s)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# The StepTraceAnnotation around each traced call; `profile` keeps the ops inside them.
STEP_LABEL = "flip_jax_profiled_step"
# Idle seconds before each traced call (not timed): XLA frees a call's scratch after
# returning, and a call dispatched before that allocates fresh memory.
PAUSE_S = 0.05


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(instructions, computations) of optimised HLO text: instruction name -> (opcode,
  op_name, [called computations]); computation name -> [instruction names]. The opcode of
  an instruction with an integer scalar result is "index-<opcode>" (see _INDEX_RESULT)."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = computations.setdefault(m.group(1), [])
      continue
    m = _INSTRUCTION.match(line)
    if m is None or current is None:
      continue
    name, opcode = m.group(1), m.group(2)
    if opcode not in CONTROL_OPS and _INDEX_RESULT.search(line):
      opcode = "index-" + opcode
    called = []
    for group in _CALLS.findall(line):
      called += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
    op_name = _OP_NAME.search(line)
    instructions[name] = (opcode, op_name.group(1) if op_name else "", called)
    current.append(name)
  return instructions, computations


def _contents(name: str, instructions: dict, computations: dict, memo: dict):
  """(opcodes, op_names) of an instruction and everything its fusion computations hold."""
  if name in memo:
    return memo[name]
  opcode, op_name, called = instructions[name]
  opcodes, op_names = {opcode}, {op_name} if op_name else set()
  if opcode not in CONTROL_OPS:
    for comp in called:
      for inner in computations.get(comp, ()):
        o, n = _contents(inner, instructions, computations, memo)
        opcodes |= o
        op_names |= n
  memo[name] = (opcodes, op_names)
  return memo[name]


def _in_scope(op_names, scope: str) -> bool:
  pattern = re.compile(r"(^|[/(])" + re.escape(scope) + r"($|[/)])")
  return any(pattern.search(n) for n in op_names)


def categorize(name: str, instructions: dict, computations: dict, memo=None) -> str | None:
  """The category of one executed op; None for control flow (counted through its ops)."""
  opcode = instructions[name][0]
  if opcode in CONTROL_OPS:
    return None
  opcodes, op_names = _contents(name, instructions, computations,
                                memo if memo is not None else {})
  if _in_scope(op_names, SCOPES["optimizer"]):
    return "optimizer"
  if _in_scope(op_names, SCOPES["attention"]):
    return "attention"
  if opcodes & MATMUL_OPS:
    return "matmul"
  if _in_scope(op_names, SCOPES["norm"]):
    return "norm"
  if _in_scope(op_names, SCOPES["activation"]):
    return "activation"
  if {o for o in opcodes if not o.startswith("index-")} - {"fusion"} <= LAYOUT_OPS:
    return "layout"
  if "reduce" in opcodes or "reduce-window" in opcodes:
    return "reduction"
  return "other"


def read_events(xspace_path: str) -> list[tuple[int, int, str, dict]]:
  """(start_ns, end_ns, name, stats) of every event in a trace file."""
  return [(int(event.start_ns), int(event.end_ns), event.name, dict(event.stats))
          for plane in jax.profiler.ProfileData.from_file(xspace_path).planes
          for line in plane.lines for event in line.events]


def op_events(events: list, module: str) -> list[tuple[int, int, str]]:
  """(start_ns, end_ns, hlo op name) of every op event of `module` (`read_events` rows)."""
  return [(start, end, str(stats["hlo_op"])) for start, end, _, stats in events
          if stats.get("hlo_module") == module and "hlo_op" in stats]


def step_windows(events: list, label: str = STEP_LABEL) -> dict[int, tuple[int, int]]:
  """step_num -> (start_ns, end_ns) of each `jax.profiler.StepTraceAnnotation(label)`."""
  return {int(stats["step_num"]): (start, end) for start, end, name, stats in events
          if name == label and "step_num" in stats}


def attribute(intervals: list[tuple[int, int, str]]) -> dict[str, float]:
  """Seconds per label of (start_ns, end_ns, label) intervals, each instant split evenly
  between the intervals covering it (so the total is the covered time)."""
  totals = collections.Counter()
  if not intervals:
    return {}
  # (time, 0 = end / 1 = start, index): at equal times ends come first
  boundaries = sorted([(s, 1, i) for i, (s, _, _) in enumerate(intervals)]
                      + [(e, 0, i) for i, (_, e, _) in enumerate(intervals)])
  active, last = set(), boundaries[0][0]
  for t, is_start, i in boundaries:
    if active and t > last:
      share = (t - last) / len(active)
      for j in active:
        totals[intervals[j][2]] += share
    last = t
    if is_start:
      active.add(i)
    else:
      active.discard(i)
  return {k: v / 1e9 for k, v in totals.items()}


def module_name(hlo_text: str) -> str:
  m = re.match(r"HloModule\s+([\w.\-]+)", hlo_text)
  if m is None:
    raise ValueError("not HLO module text")
  return m.group(1)


def profile(fn, state, arg, hlo_text: str, steps: int) -> tuple[dict, object]:
  """Runs `fn(state, arg) -> (state, out)` (a compiled, warmed-up step that donates its
  state) 1 + `steps` times under `jax.profiler.trace` and splits the time of the last
  `steps` into CATEGORIES. The first traced call is a warm-up whose ops are dropped: it
  pays the tracer's start-up, and where the tracer's own allocations took the host heap's
  free space, it pages the step's scratch in anew (page faults inside its ops). Each call
  follows a pause (PAUSE_S, untimed), as a training loop's host work gives, so that XLA
  has freed the previous call's scratch (on one core, without it, one traced flip_debug
  step in two runs paged its 540 MB in again). Compile nothing between the steps timed
  for comparison and this call, for the same reason.

  Returns (row, the last state). row: `traced_step_s` (mean wall seconds of the kept
  calls), `ops_s` (the mean per-step time in which the step's ops ran: the categories'
  sum), `between_ops_s` (the rest of `traced_step_s`, in which no op of the step ran:
  dispatch, the runtime between thunks, waiting for threads), `page_faults_per_step`
  (mean minor page faults of this process during a kept call; near 0 when the step's
  scratch is reused), and per category `<name>_s` and `<name>_share` (of `ops_s`). All
  are means over the same steps, so `ops_s + between_ops_s == traced_step_s`."""
  instructions, computations = parse_hlo(hlo_text)
  module = module_name(hlo_text)
  walls, faults = [], []
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      for i in range(1 + steps):
        time.sleep(PAUSE_S)
        with jax.profiler.StepTraceAnnotation(STEP_LABEL, step_num=i):
          before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
          t = time.perf_counter()
          state, out = fn(state, arg)
          jax.block_until_ready((state, out))
          walls.append(time.perf_counter() - t)
          faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    paths = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    if len(paths) != 1:
      raise RuntimeError(f"expected one trace file under {logdir}, found {paths}")
    trace = read_events(paths[0])
    windows = step_windows(trace)
    if sorted(windows) != list(range(1 + steps)):
      raise RuntimeError(f"the trace has step annotations {sorted(windows)}, expected "
                         f"0..{steps}")
    kept = [windows[i] for i in range(1, 1 + steps)]
    events = [e for e in op_events(trace, module)
              if any(start <= e[0] <= end for start, end in kept)]
  if not events:
    raise RuntimeError(f"the trace has no op events of module {module!r}")
  memo, labelled = {}, []
  for start, end, op in events:
    if op not in instructions:
      raise RuntimeError(f"traced op {op!r} is not in the compiled module {module!r}")
    category = categorize(op, instructions, computations, memo)
    if category is not None:
      labelled.append((start, end, category))
  seconds = attribute(labelled)
  total = sum(seconds.values()) / steps
  wall = sum(walls[1:]) / steps
  row = {"traced_step_s": round(wall, 5), "ops_s": round(total, 5),
         "between_ops_s": round(max(0.0, wall - total), 5),
         "page_faults_per_step": round(sum(faults[1:]) / steps, 1)}
  for name in CATEGORIES:
    s = seconds.get(name, 0.0) / steps
    row[f"{name}_s"] = round(s, 5)
    row[f"{name}_share"] = round(s / total, 4) if total else 0.0
  return row, state
