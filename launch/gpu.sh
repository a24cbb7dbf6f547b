#!/usr/bin/env bash
# Train on one GPU host with all of its GPUs: one process, JAX sees every local GPU and
# the mesh spans them (compute dtype bfloat16 via config.dtype='auto').
#
#   launch/gpu.sh --config=configs/flip_b16.py --workdir=/data/runs/b16 [--install] \
#       [--gpus=0,1,2,3] [--dry-run] [-- --config.KEY=VALUE ...]
#
# --install first installs this checkout next to the machine's CUDA build of jax
# (pip install --no-deps -e .). --gpus restricts the run to some GPUs (CUDA_VISIBLE_DEVICES).
# --dry-run prints the commands instead of running them. The same command resumes.
# XLA settings (a caller's XLA_FLAGS / XLA_PYTHON_CLIENT_MEM_FRACTION take precedence):
# the latency-hiding scheduler overlaps FSDP's weight all-gathers and gradient
# reduce-scatters with compute; XLA's allocator takes 95% of each GPU's memory (jax's
# default: 75%), the share `flip_jax.plan` plans against (hardware.GPU_MEMORY_FRACTION).
set -euo pipefail

config="" workdir="" gpus="" install=0 dry_run=0
overrides=()

usage_end=15  # the last line of the header comment, which --help prints
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

script_arg() {
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --install) install=1 ;;
    *) return 1 ;;
  esac
}
parse_args "$@"

if [[ -z "$config" || -z "$workdir" ]]; then
  echo "gpu.sh: --config= and --workdir= are required" >&2
  exit 2
fi


repo="$(cd "$(dirname "$0")/.." && pwd)"
if ((install)); then
  run python -m pip install --no-deps -e "$repo"
fi
if [[ -n "$gpus" ]]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
  if ((dry_run)); then echo "export CUDA_VISIBLE_DEVICES=$gpus"; fi
fi
# Later flags win in XLA_FLAGS, so the caller's come last.
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
if ((dry_run)); then
  echo "export XLA_FLAGS='$XLA_FLAGS' XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
fi
run nvidia-smi --query-gpu=index,name,memory.total --format=csv
# exec: SIGTERM (preemption) reaches the trainer, which saves and exits 0.
if ((dry_run)); then
  run python -m flip_jax.main --config="$config" --workdir="$workdir" "${overrides[@]}"
else
  cd "$repo"
  exec python -m flip_jax.main --config="$config" --workdir="$workdir" "${overrides[@]}"
fi
