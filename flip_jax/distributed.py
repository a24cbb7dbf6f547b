"""Multi-host start-up: `jax.distributed.initialize()` when the run spans several processes.

TPU pods and SLURM clusters are auto-detected by JAX (`config.distributed.auto=True`, or
implied by SLURM_JOB_ID / a multi-worker TPU_WORKER_HOSTNAMES); anything else sets
`config.distributed.{coordinator_address,num_processes,process_id}` or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
"""
import os

import jax


def _settings(config) -> dict:
  d = config.distributed
  out = {}
  addr = d.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if addr:
    out["coordinator_address"] = addr
  n = d.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0))
  if n:
    out["num_processes"] = n
  pid = d.process_id if d.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
  if pid >= 0:
    out["process_id"] = pid
  return out


def initialize(config) -> bool:
  """Returns True when jax.distributed was initialised."""
  kwargs = _settings(config)
  multi_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  auto = config.distributed.auto or "SLURM_JOB_ID" in os.environ or multi_tpu
  if kwargs.get("num_processes", 1) > 1 or (auto and not kwargs):
    jax.distributed.initialize(**kwargs)
    return True
  return False
