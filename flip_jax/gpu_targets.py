"""NVIDIA GPUs to compile for without one: target descriptions and compile-only devices.

With the CUDA plugin installed (`pip install -e '.[gpu-plan]'`) and `JAX_PLATFORMS=cpu`
set before `import jax`, `jax.experimental.topologies.get_topology_desc(platform="cuda",
topology="<partitions>x<hosts>x<devices per host>", target_config=TEXT)` describes the
devices of a GPU cluster that is not there; the planner lowers and compiles the train
step for them as it does for a TPU slice. Without `JAX_PLATFORMS=cpu` the plugin's
`cuInit` fails on a machine without a GPU and no topology is registered.

TEXT is a `stream_executor.GpuTargetConfigProto` in text format. The figures below are
the GPUs' published specs (NVIDIA's datasheets and architecture whitepapers) in the
fields of that proto; they agree with XLA's reference files
(`xla/backends/gpu/target_config/specs/{h100_sxm,h200,a100_sxm_80}.txtpb` in
openxla/xla), which also give the fields no datasheet states (launch limits, the sizes
the CUDA driver reports). Left out: `collective_memory_granularity`, which XLA's newest
H100 file has and jax 0.10.2's proto does not know. The software versions are those of
the plugin's own CUDA/cuDNN wheels, which is what a GPU machine running this jax has.

Limits of a deviceless compile (state them with any number it gives): XLA does not
autotune (GEMMs get default Triton/cuBLAS choices, not the tuned ones), the cuDNN
workspace is not in the temporaries, `cost_analysis()` is not implemented for such an
executable, and the schedule is not exactly the one a real GPU would run.
"""
from __future__ import annotations

import dataclasses
import os
import re
from importlib import metadata, util

import jax
from jax.experimental import topologies

# XLA's PrimitiveType numbers, the keys of the unit-rate tables.
_S8, _S32, _U8, _U32, _F16, _F32, _F64, _BF16 = 2, 4, 6, 8, 10, 11, 12, 16
_F8E5M2, _F8E4M3FN, _F8_FNUZ = 19, 20, (23, 24, 25)
_F8_OTHER = (28, 29, 33, 35, 36)  # the later 8-bit (and narrower) float types


@dataclasses.dataclass(frozen=True)
class Gpu:
  """Published figures of one GPU model (per GPU)."""
  name: str                     # the CUDA device name, which becomes the JAX device_kind
  compute_capability: tuple[int, int]
  sm_count: int
  boost_clock_ghz: float        # SM (scalar) clock
  tensor_clock_ghz: float       # the clock at which the datasheet's tensor peak is quoted
  memory_bytes: int             # what the CUDA driver reports (a bit under the marketed GB)
  memory_bandwidth: float       # bytes/s
  memory_clock_khz: int
  l2_cache_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int
  fp32_lanes_per_sm: int        # scalar FP32 units per SM
  tensor_fma_per_clock: dict    # per tensor core (4 per SM): {primitive type: dense FMA/clock}
  f64_tensor_fma_per_clock: int  # FP64 tensor cores, which run at the boost clock
  scalar_rates: dict            # per SM: {primitive type: (units, ops per clock)}
  nvlinks: int
  source: str


_HOPPER_TENSOR = {_S8: 1024, _U8: 1024, _F16: 512, _F32: 256, _BF16: 512,
                  **{k: 1024 for k in (_F8E5M2, _F8E4M3FN, *_F8_FNUZ, *_F8_OTHER)}}
_HOPPER_SCALAR = {_S32: (64, 1), _U32: (64, 1), _F16: (128, 2), _F32: (128, 1),
                  _F64: (64, 1), _BF16: (128, 2)}

_H100_SOURCE = ("NVIDIA H100 Tensor Core GPU datasheet and Hopper architecture whitepaper "
                "(SXM5: 132 SMs, 1980 MHz boost, 80 GB HBM3 at 3.35 TB/s, 50 MB L2, "
                "228 KB shared memory per SM, 989 TFLOP/s dense BF16, NVLink 4 x18 = "
                "900 GB/s); XLA specs/h100_sxm.txtpb")
GPUS: dict[str, Gpu] = {
    "h100": Gpu(
        "NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 1.8295201, 84_942_979_072, 3.35232e12,
        2_619_000, 50 * 2**20, 228 * 1024, 227 * 1024, 128, _HOPPER_TENSOR, 32,
        _HOPPER_SCALAR, 18, _H100_SOURCE),
    "h200": Gpu(
        "NVIDIA H200 141GB HBM3e", (9, 0), 132, 1.98, 1.8295201, 151_397_597_184, 4.8e12,
        3_750_000, 50 * 2**20, 228 * 1024, 227 * 1024, 128, _HOPPER_TENSOR, 32,
        _HOPPER_SCALAR, 18, "NVIDIA H200 datasheet (SXM: 141 GB HBM3e at 4.8 TB/s, otherwise an H100 SXM: "
        "989 TFLOP/s dense BF16, NVLink 900 GB/s); XLA specs/h200.txtpb"),
    "a100": Gpu(
        "NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 1.41, 85_100_068_864, 2.03904e12,
        1_593_000, 40 * 2**20, 164 * 1024, 163 * 1024, 64,
        {_S8: 512, _U8: 512, _F16: 256, _F32: 128, _BF16: 256}, 16,
        {_S32: (64, 1), _U32: (64, 1), _F16: (64, 4), _F32: (64, 1), _F64: (32, 1),
         _BF16: (64, 2)},
        12, "NVIDIA A100 Tensor Core GPU datasheet and Ampere architecture whitepaper "
        "(SXM4 80GB: 108 SMs, 1410 MHz boost, HBM2e at 2,039 GB/s, 40 MB L2, 164 KB shared "
        "memory per SM, 312 TFLOP/s dense BF16 (156 TF32, 624 INT8, 19.5 FP64 tensor), "
        "19.5 TFLOP/s FP32, 78 FP16 and 39 BF16 non-tensor, NVLink 3 x12 = 600 GB/s); "
        "XLA specs/a100_sxm_80.txtpb"),
}
GPUS_PER_HOST = 8  # DGX/HGX boards: 8 GPUs joined by NVLink/NVSwitch
TOPOLOGY = re.compile(r"^(h100|h200|a100):(?:([1-9]\d*)x)?([1-9]\d*)$")
EXAMPLES = "h100:8 (one HGX host), h100:2x8 (2 hosts x 8 GPUs), h200:8, a100:8, h100:1"


def peak_bf16(gpu: Gpu) -> float:
  """Dense bf16 FLOP/s implied by the tensor-core rates (2 FLOPs per FMA, 4 per SM)."""
  return 2 * gpu.sm_count * 4 * gpu.tensor_fma_per_clock[_BF16] * gpu.tensor_clock_ghz * 1e9


def _versions() -> dict:
  """CUDA toolkit and cuDNN versions of the installed NVIDIA wheels (what jax[cuda12]
  brings to a GPU machine). Read from package metadata: nothing is loaded."""
  def version(dist, default):
    try:
      return tuple(int(x) for x in metadata.version(dist).split(".")[:3])
    except metadata.PackageNotFoundError:
      return default
  return dict(cuda=version("nvidia-cuda-runtime-cu12", (12, 8, 0)),
              cudnn=version("nvidia-cudnn-cu12", (9, 8, 0)))


def _rate(key: int, clock: float, units: int, ops: int) -> str:
  return (f"    rate_infos {{\n      key: {key}\n      value {{\n        clock_rate_ghz: {clock}\n"
          f"        units_per_core: {units}\n        ops_per_clock: {ops}\n      }}\n    }}\n")


def target_config(gpu: Gpu) -> str:
  """The GpuTargetConfigProto text of `gpu` (see the module doc)."""
  v = _versions()
  cuda, cudnn = ".".join(map(str, v["cuda"])), ".".join(map(str, v["cudnn"]))
  major, minor = gpu.compute_capability
  hopper = major >= 9
  scalar = "".join(_rate(k, gpu.boost_clock_ghz, u, o)
                   for k, (u, o) in sorted(gpu.scalar_rates.items()))
  rates = {k: (gpu.tensor_clock_ghz, o) for k, o in gpu.tensor_fma_per_clock.items()}
  rates[_F64] = (gpu.boost_clock_ghz, gpu.f64_tensor_fma_per_clock)
  matrix = "".join(_rate(k, c, 4, o) for k, (c, o) in sorted(rates.items()))
  clock_khz = int(round(gpu.boost_clock_ghz * 1e6))
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {gpu.sm_count}
  fpus_per_core: {gpu.fp32_lanes_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.memory_bandwidth)}
  l2_cache_size: {gpu.l2_cache_bytes}
  clock_rate_ghz: {gpu.boost_clock_ghz}
  device_memory_size: {gpu.memory_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{
    major: {major}
    minor: {minor}
    feature_extension: {"ACCELERATED_FEATURES" if hopper else "NONE"}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  scalar_unit_description {{
{scalar}  }}
  matrix_unit_description {{
{matrix}  }}
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
  device_vendor: "NVIDIA Corporation"
  platform_version: "Compute Capability {major}.{minor}{"a" if hopper else ""}"
  model_str: "sm_{major}.{minor}{"a" if hopper else ""} with {gpu.memory_bytes}B RAM, {gpu.sm_count} cores, {clock_khz}KHz clock, {gpu.memory_clock_khz}KHz mem clock, {gpu.l2_cache_bytes}B L2$"
  device_address_bits: 64
  ecc_enabled: true
  name: "{gpu.name}"
  runtime_version: "{cuda}"
  compile_time_toolkit_version: "{cuda}"
  dnn_version: "{cudnn}"
  device_interconnect_info {{
    active_links: {gpu.nvlinks}
  }}
}}
platform_name: "CUDA"
dnn_version_info {{
  major: {v["cudnn"][0]}
  minor: {v["cudnn"][1]}
  patch: {v["cudnn"][2]}
}}
device_description_str: "{gpu.name}"
"""


def parse(name: str) -> tuple[Gpu, int, int] | None:
  """'h100:2x8' -> (H100, 2 hosts, 8 GPUs per host); None when `name` is no GPU topology."""
  match = TOPOLOGY.match(name)
  if not match:
    return None
  hosts = int(match.group(2) or 1)
  return GPUS[match.group(1)], hosts, int(match.group(3))


def is_gpu_topology(name: str) -> bool:
  return name.split(":")[0] in GPUS


def topology_devices(name: str) -> list:
  """The compile-only devices of a GPU cluster, e.g. 'h100:8' -> 8 H100s on one host."""
  parsed = parse(name)
  if parsed is None:
    raise ValueError(f"unknown GPU topology {name!r}: expected GPU:[HOSTSx]GPUS_PER_HOST "
                     f"with GPU in {', '.join(GPUS)}; valid examples: {EXAMPLES}")
  gpu, hosts, per_host = parsed
  if per_host > GPUS_PER_HOST:
    raise ValueError(f"GPU topology {name!r}: at most {GPUS_PER_HOST} GPUs per host; "
                     f"write {GPUS_PER_HOST * 2} GPUs as 2x{GPUS_PER_HOST}")
  if util.find_spec("jax_plugins.xla_cuda12") is None:
    raise ValueError(f"GPU topology {name!r}: the CUDA plugin is not installed: "
                     "pip install -e '.[gpu-plan]'")
  if jax.config.jax_platforms != "cpu" and os.environ.get("JAX_PLATFORMS") != "cpu":
    raise ValueError(f"GPU topology {name!r}: set JAX_PLATFORMS=cpu before jax is imported "
                     "(otherwise the CUDA plugin looks for a GPU and registers no topology)")
  try:
    return topologies.get_topology_desc(platform="cuda", topology=f"1x{hosts}x{per_host}",
                                        target_config=target_config(gpu)).devices
  except Exception as err:  # noqa: BLE001 - the plugin raises several types; name it
    reason = (str(err).strip() or type(err).__name__).splitlines()[0]
    raise ValueError(f"GPU topology {name!r}: {reason}; valid examples: {EXAMPLES}") from None


# Between hosts, a collective runs over the cluster network: one 400 Gb/s InfiniBand NIC
# per GPU on DGX/HGX H100 and H200 systems, one 200 Gb/s NIC per GPU on DGX A100.
NETWORK_BW = {"h100": 400e9 / 8, "h200": 400e9 / 8, "a100": 200e9 / 8}  # bytes/s, one direction


def cluster_spec(spec, topology: str):
  """`spec` (flip_jax.hardware) for a multi-host GPU topology: its interconnect bandwidth
  becomes the per-GPU network bandwidth, a bound for collectives that cross hosts
  (pessimistic for those that stay on NVLink). TPU and one-host topologies: unchanged."""
  parsed = parse(topology)
  if parsed is None or parsed[1] == 1:
    return spec
  key = topology.split(":")[0]
  return dataclasses.replace(spec, ici_bw=NETWORK_BW[key],
                             source=spec.source + f"; between hosts {NETWORK_BW[key] * 8 / 1e9:.0f}"
                             " Gb/s InfiniBand per GPU")
