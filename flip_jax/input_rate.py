"""Is a run data-bound? Images/s the train step consumes per host against images/s the
host's CPUs decode and augment, for `flip_jax.plan`.

Needed per host: the plan's predicted images/s (a roofline, so an upper bound on what
the step can take) over the slice's hosts. Delivered per host: host vCPUs x the input
pipeline's images per CPU-second, as `python -m flip_jax.data.benchmark` measures it
(`images_per_cpu_s` of its `flip_jax` lines with the most workers; median over repeats):
what the host delivers if every vCPU works on input, an upper bound too, since the
training loop needs some CPU as well. `data_bound` is true when needed > delivered.

Imports nothing heavy: the planner runs where grain is not installed.
"""
from __future__ import annotations

import json
import statistics

# vCPUs of one TPU VM host with 4 chips (as `flip_jax.plan` lays out its topologies), by
# device kind, first match wins, as Google Cloud publishes the host shapes: v3 96 vCPUs,
# v4 240 (ct4p-hightpu-4t), v5e 112 (ct5lp-hightpu-4t), v5p 208 (ct5p-hightpu-4t), v6e
# 180 (ct6e-standard-4t). `--host_cores` plans another host.
HOST_VCPUS = {"TPU v3": 96, "TPU v4": 240, "TPU v5 lite": 112, "TPU v5": 208,
              "TPU v6 lite": 180}


def host_vcpus(device_kind: str) -> int | None:
  for key, vcpus in HOST_VCPUS.items():
    if key in device_kind:
      return vcpus
  return None


def rate_from_benchmark(path: str, image_size: int) -> float:
  """Images per CPU-second from the data benchmark's JSON lines (`--out` file), measured
  at `image_size` (a crop of another size costs differently)."""
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  ours = [r for r in rows if r.get("pipeline") == "flip_jax"]
  if not ours:
    raise ValueError(f"{path}: no 'pipeline': 'flip_jax' line (write it with "
                     "python -m flip_jax.data.benchmark --out=FILE)")
  sizes = {r["image_size"] for r in ours}
  if sizes != {image_size}:
    raise ValueError(f"{path}: measured at image_size {sorted(sizes)}, the config has "
                     f"{image_size}")
  most = max(r["num_workers"] for r in ours)
  return statistics.median(r["images_per_cpu_s"] for r in ours if r["num_workers"] == most)


def fields(row: dict, hosts: int, images_per_core_s: float, cores: int) -> dict:
  """The data-bound columns of one plan row with `hosts` hosts of `cores` vCPUs; {} when
  it has no predicted images/s (did not fit)."""
  if row.get("predicted_images_per_s") is None:
    return {}
  needed = row["predicted_images_per_s"] / hosts
  delivered = cores * images_per_core_s
  return dict(hosts=hosts, host_cores=cores, data_images_per_core_s=images_per_core_s,
              images_per_s_needed_per_host=needed,
              data_images_per_s_per_host=delivered, data_bound=needed > delivered,
              data_cores_needed_per_host=needed / images_per_core_s)
