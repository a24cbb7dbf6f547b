"""Public figures of the accelerators we plan for and measure on, per JAX device.

One table serves the benchmark (MFU against the bf16 peak of the device it runs on) and
the pod planner (the roofline of a TPU generation it compiles for). A JAX device is a
TensorCore on TPU v3 (two per chip, each with half the chip's HBM, bandwidth and
links) and a whole chip elsewhere (v4 and v5p run their two TensorCores as one
"megacore" device; v5e and v6e have one TensorCore per chip).

`ici_bw` is the bandwidth one device can push into the interconnect in one direction:
Cloud TPU's published *all-reduce bandwidth per Pod* divided by the Pod's chips (v3,
v4, v5e, v6e; for v5e and v6e this equals half the published bidirectional per-chip
ICI bandwidth), and half the published bidirectional per-chip ICI bandwidth for v5p,
whose page gives no Pod all-reduce figure.

NVIDIA GPUs: `hbm_bytes` is the part of the memory the CUDA driver reports that XLA may
use (`GPU_MEMORY_FRACTION`, what launch/gpu.sh gives it via
XLA_PYTHON_CLIENT_MEM_FRACTION); `ici_bw` is NVLink's per-direction bandwidth (half the
published bidirectional figure), the bandwidth within one 8-GPU host.
flip_jax/gpu_targets.py holds the rest of each GPU's figures (tests check they agree).
"""
from __future__ import annotations

import dataclasses

GIB = 2**30
GPU_MEMORY_FRACTION = 0.95


@dataclasses.dataclass(frozen=True)
class Spec:
  peak_bf16: float                 # dense bf16 FLOP/s
  source: str                      # where the figures come from
  hbm_bytes: float | None = None   # HBM capacity
  hbm_bw: float | None = None      # HBM bytes/s
  ici_bw: float | None = None      # interconnect bytes/s, one direction (see module doc)


_V3 = "cloud.google.com/tpu/docs/v3"
_V4 = "cloud.google.com/tpu/docs/v4"
_V5E = "cloud.google.com/tpu/docs/v5e"
_V5P = "cloud.google.com/tpu/docs/v5p"
_V6E = "cloud.google.com/tpu/docs/v6e"

# device_kind substring -> figures per JAX device; first match wins ("TPU v5 lite"
# before "TPU v5"). Compile-only topology devices report the same kinds as real ones.
SPECS: dict[str, Spec] = {
    "TPU v3": Spec(
        123e12 / 2, f"{_V3}: per chip 123 TFLOP/s bf16, 32 GiB HBM2 at 900 GB/s, 2 cores; "
        "all-reduce 340 TB/s per 1024-chip Pod", 16 * GIB, 900e9 / 2, 340e12 / 1024 / 2),
    "TPU v4": Spec(
        275e12, f"{_V4}: per chip 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s; "
        "all-reduce 1.1 PB/s per 4096-chip Pod", 32 * GIB, 1200e9, 1.1e15 / 4096),
    "TPU v5 lite": Spec(
        197e12, f"{_V5E}: per chip 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, "
        "ICI 400 GB/s bidirectional (all-reduce 51.2 TB/s per 256-chip Pod)",
        16e9, 819e9, 51.2e12 / 256),
    "TPU v5": Spec(
        459e12, f"{_V5P}: per chip 459 TFLOP/s bf16, 95 GB HBM2e at 2765 GB/s, "
        "ICI 1200 GB/s bidirectional", 95e9, 2765e9, 1200e9 / 2),
    "TPU v6 lite": Spec(
        918e12, f"{_V6E}: per chip 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, "
        "ICI 800 GB/s bidirectional (all-reduce 102.4 TB/s per 256-chip Pod)",
        32e9, 1638e9, 102.4e12 / 256),
    "H200": Spec(
        989e12, "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense BF16, 141 GB HBM3e at "
        "4.8 TB/s (151,397,597,184 B reported), NVLink 900 GB/s bidirectional",
        GPU_MEMORY_FRACTION * 151_397_597_184, 4.8e12, 900e9 / 2),
    "H100": Spec(
        989e12, "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense BF16, 80 GB HBM3 at "
        "3.35 TB/s (84,942,979,072 B reported), NVLink 900 GB/s bidirectional",
        GPU_MEMORY_FRACTION * 84_942_979_072, 3.35232e12, 900e9 / 2),
    "A100": Spec(
        312e12, "NVIDIA A100 SXM4 80GB datasheet: 312 TFLOP/s dense BF16, HBM2e at "
        "2,039 GB/s (85,100,068,864 B reported), NVLink 600 GB/s bidirectional",
        GPU_MEMORY_FRACTION * 85_100_068_864, 2.03904e12, 600e9 / 2),
}


def spec_for(device_kind: str) -> Spec:
  for key, spec in SPECS.items():
    if key in device_kind:
      return spec
  raise ValueError(f"no figures known for device kind {device_kind!r}; add it to "
                   "flip_jax/hardware.py SPECS")
