"""Pod planner: compile the real train step for a TPU topology on any machine, and
predict its memory and step time.

  python -m flip_jax.plan --config=configs/flip_l16.py --topology=v3:8x16 \
      [--config.KEY=VALUE ...] [--mask_ratios=0,0.5,0.75] [--search]

With `libtpu` installed (the `tpu` extra), `jax.experimental.topologies` describes the
devices of a TPU slice without having one. The planner builds the mesh from the config
over those devices, constructs the same `train.Trainer` the training loop uses, lowers
its jitted step (same shardings, donation, remat) on abstract inputs at the config's
global batch, and compiles it with XLA's TPU compiler. From the executable:

- memory per device: `memory_analysis()` arguments + outputs - aliased (the donated
  state counts once) + temporaries + generated code, against the generation's HBM.
  XLA refuses a program that needs more HBM than it can use; then its message gives the
  numbers (`fits: false`, `shortfall_gib` against the HBM XLA says it can use);
- FLOPs and bytes accessed per device: `cost_analysis()`;
- collectives by kind, count and size: the optimized HLO (`flip_jax/hlo_stats.py`);
- what compiling costs: `compile_s` (trace, lower and compile the step) and, since the CLI
  runs each plan in its own Python process (`plan_isolated`), `host_peak_rss_gib`, that
  process's peak resident memory: about what a training host needs to compile the step.
- with an input rate (`--data_benchmark=FILE` from `flip_jax.data.benchmark --out`, or
  `--data_images_per_core`): images/s needed per host against what the host's vCPUs
  decode, and `data_bound` (`flip_jax/input_rate.py`).

NVIDIA GPUs the same way (`--topology=h100:8`, `h200:8`, `a100:8`, `h100:2x8`): the CUDA
plugin (the `gpu-plan` extra) compiles for compile-only devices described by
`flip_jax/gpu_targets.py`; FLOPs and bytes come from `flip_jax/gpu_cost.py` (the
executable has no `cost_analysis()`), and the row says whether cuDNN attention ran.
`--max_batch` finds the largest per-device batch that fits (`flip_jax/plan_batch.py`).

Prediction (a roofline, `predict`): max(FLOPs / bf16 peak, bytes accessed / HBM
bandwidth) + collective traffic / ICI bandwidth, with the figures of
`flip_jax/hardware.py`. Its limits: every FLOP runs at the peak (so the MFU is an
optimistic bound); collectives are assumed not to overlap compute
(XLA overlaps many: an upper bound there) but to run at the full injection bandwidth
over all links (a lower bound there: rings along one mesh axis use fewer links); no
latency terms; bytes accessed are XLA's estimate of HBM traffic. MFU counts the
objective's analytic model FLOPs, not XLA's (which include remat recomputation).

The compute dtype: `config.dtype='auto'` resolves by the backend the process runs on,
which is the CPU here, so the planner plans 'auto' as bfloat16 (what the trainer picks on
a TPU); an explicit dtype is kept. The text tower is sized by
`config.model.text.vocab_size` (the trainer sets it from the tokenizer at start-up).

The planner itself runs on the CPU (`JAX_PLATFORMS=cpu` unless set): it never executes
the step, and on a TPU VM it must not grab the chips a training run may hold. libtpu
prints warnings about TPU_ACCELERATOR_TYPE / worker hostnames at the first topology
call; they are harmless here.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flip_jax import (config_check, config_io, gpu_cost, gpu_targets, hardware,  # noqa: E402
                      hlo_stats, input_rate, loop_cost, plan_batch, sharding, train, trees)

GIB = hardware.GIB
# Generations whose two TensorCores per chip run as one "megacore" JAX device (as on a
# real v4 / v5p VM); v3 shows each core as a device, v5e and v6e have one core per chip.
MEGACORE = ("v4", "v5p")
TOPOLOGY = re.compile(r"^(v3|v4|v5e|v5p|v6e):([1-9]\d*(?:x[1-9]\d*){1,2})$")
EXAMPLES = ("v3:4x4 (v3-32), v3:8x16 (v3-256), v3:16x16 (v3-512), v4:2x2x1 (v4-8), "
            "v4:4x4x8 (v4-256), v5e:16x16, v5p:4x4x8, v6e:16x16")


def topology_devices(name: str) -> list:
  """The compile-only devices of a TPU slice, e.g. 'v3:8x16' -> 256 TensorCores, or of
  NVIDIA GPUs, e.g. 'h100:8' (flip_jax/gpu_targets.py)."""
  if gpu_targets.is_gpu_topology(name):
    return gpu_targets.topology_devices(name)
  match = TOPOLOGY.match(name)
  if not match:
    raise ValueError(f"unknown TPU topology {name!r}: expected GENERATION:AxB[xC] with "
                     f"GENERATION in v3, v4, v5e, v5p, v6e; valid examples: {EXAMPLES}")
  generation, dims = match.group(1), [int(d) for d in match.group(2).split("x")]
  # Up to 2x2 chips per host (any slice divides into those); fewer for 1-chip slices.
  bounds = (min(2, dims[0]), min(2, dims[1]), 1)
  extra = {"chip_config_name": "megacore"} if generation in MEGACORE else {}
  # libtpu's lockfile keeps two processes off one VM's chips; describing a topology to
  # compile for touches none, so planners (a test and its CLI subprocess, or a planner on
  # a TPU VM that is training) may load it side by side. Read when libtpu first loads.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name,
                                        chips_per_host_bounds=bounds, **extra).devices
  except RuntimeError as err:
    reason = (str(err).strip() or type(err).__name__).splitlines()[0]
    if importlib.util.find_spec("libtpu") is None:
      reason = "libtpu is not installed: pip install -e '.[tpu]'"
    raise ValueError(f"TPU topology {name!r}: {reason}; valid examples: {EXAMPLES}") from None


# ------------------------------------------------------------------ compile

@dataclasses.dataclass
class OutOfMemory(Exception):
  """XLA refused the program for lack of HBM; byte counts parsed from its message."""
  message: str
  required: float | None
  available: float | None


_SIZE = r"([\d.]+)([KMGT]?)B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _oom_from(message: str) -> OutOfMemory:
  """XLA:TPU words its HBM errors in a few ways; sizes are printed in binary units."""
  def size(pattern):
    m = re.search(pattern, message)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None
  required = (size(r"Total hbm usage >= " + _SIZE) or size(r"Used " + _SIZE + " of")
              or size(r"temporaries \(" + _SIZE + r"\)"))
  available = size(r"available HBM \(" + _SIZE + r"\)") or size(r"of " + _SIZE + " hbm")
  return OutOfMemory(message.strip().splitlines()[0], required, available)


def _batch_sds(trainer) -> dict:
  return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_shardings[k])
          for k, s in trainer.objective.host_batch_spec().items()}


def compile_step(trainer, state):
  """The trainer's jitted step traced and lowered on the abstract `state` and batch, and
  compiled for the mesh's devices: (compiled, the step's jaxpr). Raises OutOfMemory when
  XLA finds it cannot fit."""
  with jax.set_mesh(trainer.mesh):
    traced = trainer.step.trace(state, _batch_sds(trainer))
    lowered = traced.lower()
  try:
    return lowered.compile(), traced.jaxpr.jaxpr
  except jax.errors.JaxRuntimeError as err:
    if "RESOURCE_EXHAUSTED" in str(err) and "hbm" in str(err).lower():
      raise _oom_from(str(err)) from None
    raise  # other failures (an SMEM/VMEM overflow, a bug) are not a question of fit


def _per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (no layout padding)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ roofline

def predict(spec: hardware.Spec, flops: float, bytes_accessed: float, traffic: float,
            model_flops_per_device: float | None) -> dict:
  """Step time of one device: max(compute, HBM) + collectives, and the MFU that implies."""
  compute_s, memory_s = flops / spec.peak_bf16, bytes_accessed / spec.hbm_bw
  collective_s = traffic / spec.ici_bw
  step_s = max(compute_s, memory_s) + collective_s
  mfu = (model_flops_per_device / step_s / spec.peak_bf16
         if model_flops_per_device is not None else None)
  return dict(compute_s=compute_s, memory_s=memory_s, collective_s=collective_s,
              predicted_step_s=step_s, predicted_mfu=mfu,
              bound="compute" if compute_s >= memory_s else "memory")


# ------------------------------------------------------------------ one plan

def resolve(config):
  """A copy of the config as a TPU run would see it (see the module doc on dtype)."""
  c = config.copy_and_resolve_references()
  if c.dtype == "auto":
    c.dtype = "bfloat16"
  c.evals = {}  # evaluators are not part of the step
  return c


def plan(config, topology: str, devices=None) -> dict:
  """Compiles config's train step for `topology` and returns the report (see README)."""
  devices = topology_devices(topology) if devices is None else devices
  c = resolve(config)
  config_check.validate(c, len(devices))
  spec = gpu_targets.cluster_spec(hardware.spec_for(devices[0].device_kind), topology)
  mesh = sharding.make_mesh(c.mesh, devices)
  dp = sharding.data_parallel_size(c.mesh, len(devices))
  trainer = train.Trainer(c, mesh)
  row = dict(topology=topology, device_kind=devices[0].device_kind, devices=len(devices),
             mesh=dict(mesh.shape), mask_ratio=c.mask_ratio, dtype=c.dtype,
             global_batch=c.batch_size, per_device_batch=c.batch_size // dp,
             hbm_capacity=spec.hbm_bytes)
  state = trainer.abstract_state()
  row["state_bytes_per_device"] = _per_device_bytes(state)
  row["param_bytes_per_device"] = _per_device_bytes(state["params"])
  inputs = row["state_bytes_per_device"] + _per_device_bytes(_batch_sds(trainer))
  t0 = time.perf_counter()
  try:
    compiled, jaxpr = compile_step(trainer, state)
  except OutOfMemory as oom:
    required = oom.required
    if required is not None and "temporaries" in oom.message:
      required += inputs  # that message counts temporaries only
    row.update(fits=False, hbm_bytes_per_device=required and int(required),
               xla_error=oom.message, xla_available_hbm=oom.available and int(oom.available),
               compile_s=time.perf_counter() - t0)
    if required is not None:
      row["shortfall_gib"] = (required - (oom.available or spec.hbm_bytes)) / GIB
    return row
  row["compile_s"] = time.perf_counter() - t0
  row.update(_analyse(trainer, state, compiled, jaxpr, spec, len(devices)))
  return row


def _analyse(trainer, state, compiled, jaxpr, spec, num_devices) -> dict:
  m = compiled.memory_analysis()
  memory = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes)
  hbm = (memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
         + memory["code"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gpu = cost is None  # a deviceless CUDA executable has none (flip_jax/gpu_cost.py)
  if gpu:
    cost = gpu_cost.cost_analysis(compiled)
  hlo = compiled.as_text()
  cost = loop_cost.correct(cost, jaxpr, hlo, num_devices)  # scanned layers: XLA counts 1
  records = hlo_stats.collectives(hlo, num_devices)
  # Collectives over arrays shaped like a weight (trained or extra): FSDP's gathers and
  # gradient reductions, told apart from the loss's gathers over the batch.
  # A scanned tower gathers one layer's slice of its stacked params at a time.
  weight_dims = {tuple(x.shape[1:] if trees.is_stacked(name) else x.shape)
                 for name, x in trees.flatten((state["params"], state["extra"])).items()}
  traffic = sum(r["traffic"] for r in records)
  try:
    model_flops = trainer.objective.flops_per_sample() * trainer.config.batch_size
  except NotImplementedError:
    model_flops = None
  weight_records = [r for r in records if weight_dims & set(r["dims"])]
  out = dict(
      hbm_bytes_per_device=hbm, fits=hbm <= spec.hbm_bytes, memory=memory,
      flops_per_device=cost["flops"], bytes_accessed_per_device=cost["bytes accessed"],
      loop_flops_added=cost["loop_flops_added"], loop_bytes_added=cost["loop_bytes_added"],
      collectives=_counts(records, hlo_stats.KINDS),
      weight_collectives=_counts(weight_records, ("all-gather", "reduce-scatter", "all-reduce")),
      collective_traffic_per_device=traffic, model_flops_per_step=model_flops)
  if gpu:
    out.update(attention="cudnn" if cost["cudnn_attention_calls"] else "xla",
               cudnn_attention_calls=cost["cudnn_attention_calls"],
               cudnn_attention_flops_per_device=cost["cudnn_attention_flops"])
  if not out["fits"]:
    out["shortfall_gib"] = (hbm - spec.hbm_bytes) / GIB
  out.update(predict(spec, cost["flops"], cost["bytes accessed"], traffic,
                     model_flops / num_devices if model_flops is not None else None))
  out["predicted_images_per_s"] = trainer.config.batch_size / out["predicted_step_s"]
  return out


def _counts(records, kinds) -> dict:
  summary = hlo_stats.summarize(records)
  return {k: {"count": summary[k]["count"], "bytes": summary[k]["bytes"]} for k in kinds}


# ------------------------------------------------------------------ one plan, one process

_ROW_PREFIX = "flip_jax.plan row: "


def plan_isolated(config, topology: str) -> dict:
  """`plan` in a fresh Python process, the row plus `host_peak_rss_gib`: that process's
  peak resident memory. A pod-size compile holds GBs of host memory that a process does not
  give back, so plans in one process add up; one each is also what a training host pays
  to compile that step. A process the OS kills (out of host memory) is reported as such."""
  with tempfile.TemporaryDirectory(prefix="flip_jax_plan_") as tmp:
    config_io.write(config, tmp)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from flip_jax import plan; plan._child(*sys.argv[1:])",
         tmp, topology], capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
  rows = [l[len(_ROW_PREFIX):] for l in proc.stdout.splitlines() if l.startswith(_ROW_PREFIX)]
  if proc.returncode == 0 and rows:
    row = json.loads(rows[-1])
    if "error" in row:
      raise config_check.ConfigError(row["error"])
    return row
  if proc.returncode < 0:
    raise RuntimeError(f"the planner's subprocess for {topology} was killed by signal "
                       f"{-proc.returncode} (SIGKILL: most likely out of host memory)")
  tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
  raise RuntimeError(f"the planner's subprocess for {topology} failed "
                     f"(exit {proc.returncode}):\n{tail}")


def _child(config_dir: str, topology: str) -> None:
  try:
    row = plan(config_io.read(config_dir), topology)
  except (ValueError, config_check.ConfigError) as err:
    row = {"error": str(err)}
  row["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
  print(_ROW_PREFIX + to_json(row), flush=True)


# ------------------------------------------------------------------ search

def candidates(config, num_devices: int, fsdp_sizes=None, per_device_batches=None):
  """(fsdp, per-device batch) pairs: fsdp over the powers of two that divide the
  data-parallel size, the per-device batch at half, once and twice the config's."""
  dp = sharding.data_parallel_size(config.mesh, num_devices)
  base = config.batch_size // dp
  fsdp_sizes = fsdp_sizes or [2**i for i in range(int(math.log2(dp)) + 1) if dp % 2**i == 0]
  per_device_batches = per_device_batches or sorted({max(1, base // 2), base, 2 * base})
  return [(f, b) for f in fsdp_sizes for b in sorted(per_device_batches)], dp


def search(config, topology: str, devices, fsdp_sizes=None, per_device_batches=None,
           report=print, isolate: bool = False) -> dict | None:
  """Plans every candidate mesh shape and per-device batch; returns the fits with the
  most predicted images/s. A batch that does not fit ends that fsdp size's batches.
  isolate: each plan in its own process (`plan_isolated`)."""
  pairs, dp = candidates(resolve(config), len(devices), fsdp_sizes, per_device_batches)
  best, skip = None, set()
  for fsdp, per_device in pairs:
    if fsdp in skip:
      continue
    c = config.copy_and_resolve_references()
    c.mesh.update(data=dp // fsdp, fsdp=fsdp)
    c.batch_size = per_device * dp
    c.total_samples = max(c.total_samples, c.batch_size)
    if isolate:
      row = plan_isolated(c, topology)
    else:
      row = plan(c, topology, devices)
      jax.clear_caches()  # one executable at a time: a pod-size compile holds GBs of host memory
    report(row)
    if not row["fits"]:
      skip.add(fsdp)
    elif best is None or row["predicted_images_per_s"] > best["predicted_images_per_s"]:
      best = row
  return best


# ------------------------------------------------------------------ output

COLUMNS = [("mask", "mask_ratio", "{:.2f}"), ("mesh d/f/t", "mesh", None),
           ("batch", "global_batch", "{}"), ("per_dev", "per_device_batch", "{}"),
           ("HBM GiB", "hbm_bytes_per_device", "gib"), ("cap GiB", "hbm_capacity", "gib"),
           ("fits", "fits", "{}"), ("TFLOP/dev", "flops_per_device", "tera"),
           ("coll GB/dev", "collective_traffic_per_device", "giga"),
           ("step s", "predicted_step_s", "{:.3f}"), ("MFU", "predicted_mfu", "{:.3f}"),
           ("img/s", "predicted_images_per_s", "{:.0f}"), ("attn", "attention", "{}"),
           ("compile s", "compile_s", "{:.0f}"), ("host GiB", "host_peak_rss_gib", "{:.1f}"),
           ("data bound", "data_bound", "{}")]


def table_row(row: dict) -> str:
  cells = []
  for _, key, fmt in COLUMNS:
    v = row.get(key)
    if v is None:
      cells.append("-")
    elif key == "mesh":
      cells.append("{data}x{fsdp}x{tensor}".format(**v))
    elif fmt == "gib":
      cells.append(f"{v / GIB:.2f}")
    elif fmt == "tera":
      cells.append(f"{v / 1e12:.2f}")
    elif fmt == "giga":
      cells.append(f"{v / 1e9:.2f}")
    else:
      cells.append(fmt.format(v))
  return "  ".join(f"{c:>{max(len(h), 8)}}" for c, (h, _, _) in zip(cells, COLUMNS))


def table_header() -> str:
  return "  ".join(f"{h:>{max(len(h), 8)}}" for h, _, _ in COLUMNS)


def to_json(row: dict) -> str:
  def clean(v):
    if isinstance(v, float):
      return float(f"{v:.6g}")
    if isinstance(v, dict):
      return {k: clean(x) for k, x in v.items()}
    return v
  return json.dumps({k: clean(v) for k, v in row.items()})


def define_flags() -> dict:
  out = dict(
      config=config_flags.DEFINE_config_file("config", None, "configs/*.py file",
                                             lock_config=False),
      topology=flags.DEFINE_string("topology", None, f"TPU slice, e.g. {EXAMPLES}; or "
                                   f"NVIDIA GPUs, e.g. {gpu_targets.EXAMPLES}"),
      mask_ratios=flags.DEFINE_list("mask_ratios", [], "plan each of these mask ratios "
                                    "(default: the config's)"),
      search=flags.DEFINE_bool("search", False, "try mesh shapes (data x fsdp) and "
                               "per-device batches; print the fastest that fits"),
      fsdp_sizes=flags.DEFINE_list("fsdp_sizes", [], "--search: fsdp sizes to try "
                                   "(default: powers of two dividing data x fsdp)"),
      per_device_batches=flags.DEFINE_list("per_device_batches", [], "--search: per-device "
                                           "batches to try (default: half, once, twice the "
                                           "config's)"),
      host_cores=flags.DEFINE_integer("host_cores", 0, "vCPUs per host for the data-bound "
                                      "check (default: the generation's, see "
                                      "flip_jax/input_rate.py)"),
      data_images_per_core=flags.DEFINE_float("data_images_per_core", 0.0, "input "
                                              "pipeline images per CPU-second: adds the "
                                              "data-bound columns"),
      data_benchmark=flags.DEFINE_string("data_benchmark", "", "JSON lines of "
                                         "flip_jax.data.benchmark --out: the per-core "
                                         "rate from them"),
      max_batch=flags.DEFINE_bool("max_batch", False, "find the largest per-device batch "
                                  "(a multiple of 8) that fits, per mask ratio "
                                  "(flip_jax/plan_batch.py)"),
      max_compiles=flags.DEFINE_integer("max_compiles", 6, "--max_batch: stop after this "
                                        "many compiles (the JSON line gives the bracket)"))
  flags.mark_flags_as_required(["config", "topology"])
  return out


def main(argv, flags: dict):
  del argv
  topology, config = flags["topology"].value, flags["config"].value
  try:
    devices = topology_devices(topology)
  except ValueError as err:
    sys.exit(f"flip_jax.plan: {err}")
  try:
    data_bound = _data_bound_columns(flags, config, devices)
  except (OSError, ValueError) as err:
    sys.exit(f"flip_jax.plan: {err}")
  print(table_header(), flush=True)
  try:
    for ratio in flags["mask_ratios"].value or [None]:
      c = config.copy_and_resolve_references()
      if ratio is not None:
        c.mask_ratio = float(ratio)
      if flags["max_batch"].value:
        found = plan_batch.max_batch(
            c, topology, devices, max_compiles=flags["max_compiles"].value, plan_fn=plan,
            report=lambda row: print(table_row(row) + "\n" + to_json(row), flush=True))
        best = found.pop("row")
        print(f"largest that fits: per device {found['max_per_device_batch']}, global "
              f"{found['max_global_batch']} ({found['compiles']} compiles)", flush=True)
        print(to_json(dict(found, mask_ratio=c.mask_ratio, topology=topology,
                           hbm_bytes_per_device=best and best["hbm_bytes_per_device"],
                           max_batch=True)), flush=True)
      elif flags["search"].value:
        best = search(c, topology, devices, [int(x) for x in flags["fsdp_sizes"].value],
                      [int(x) for x in flags["per_device_batches"].value],
                      report=lambda row: print(table_row(data_bound(row)), flush=True),
                      isolate=True)
        print("fastest that fits: " + (table_row(best) if best else "none"), flush=True)
        if best:
          print(to_json(dict(best, search_best=True)), flush=True)
      else:
        row = data_bound(plan_isolated(c, topology))
        print(table_row(row) + "\n" + to_json(row), flush=True)  # each plan as it is done
  except (config_check.ConfigError, RuntimeError) as err:
    sys.exit(f"flip_jax.plan: {err}")


def _data_bound_columns(flags: dict, config, devices):
  """A function adding `input_rate.fields` to a row, when an input rate is given."""
  rate = flags["data_images_per_core"].value
  if flags["data_benchmark"].value:
    rate = input_rate.rate_from_benchmark(flags["data_benchmark"].value, config.image_size)
  host_cores = flags["host_cores"].value or input_rate.host_vcpus(devices[0].device_kind)
  if rate and not host_cores:
    raise ValueError(f"no host vCPU count known for {devices[0].device_kind!r}: pass "
                     "--host_cores")
  hosts = len({d.process_index for d in devices})

  def add(row: dict) -> dict:
    if rate:
      row.update(input_rate.fields(row, hosts, rate, host_cores))
    return row
  return add


if __name__ == "__main__":
  import functools
  from absl import app
  _FLAGS = define_flags()
  app.run(functools.partial(main, flags=_FLAGS))
