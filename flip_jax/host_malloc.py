"""On CPU, glibc keeps the memory XLA frees and hands it back: a step's scratch is not paged
in anew.

XLA:CPU mallocs each execution's temporary buffer (all of a step's intermediates: 2.1 GB
for flip_b16 at batch 8) and frees it when the step ends. glibc serves an allocation that
large with a fresh `mmap` (its mmap threshold is at most 32 MiB, and a worker thread's
arena cannot hold it anyway) and `munmap`s it on free, so every step the kernel faults in
and zeroes each 4 KiB page again on first touch: for flip_b16 about 540k page faults and
1.3-1.6 s of kernel time per step, inside the ops that first write the buffer.

`reuse_freed_memory()` sets glibc's malloc, through `mallopt`, to one arena (so XLA's
threads allocate from the main heap), no `mmap` and no trimming: the freed buffer stays in
the heap, and after the first few steps (XLA may free one step's buffer only after the next
has taken its own, so the heap grows to hold two) every step gets one back already mapped:
flip_b16's step then takes no page faults. It changes where memory comes from, never what
is computed. The process keeps its peak heap until it exits.

The other cost is one malloc arena for every thread: tiny steps and compilation get ~10% slower
(flip_debug's run: 5m27s against 4m48s). So it follows `config.host_malloc_reuse`, on by
default and off in the *_debug configs.

It must run before jax starts its CPU backend: threads that have already picked an arena
keep it. So `flip_jax.main`, `flip_jax.benchmark` and benchmarks/side_by_side.py call it
first. It does nothing on an accelerator host (there the step's memory is the device's),
off glibc, or when FLIP_JAX_SYSTEM_MALLOC=1 asks for glibc's defaults.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

import jax
from jax._src import xla_bridge

OPT_OUT = "FLIP_JAX_SYSTEM_MALLOC"
# mallopt parameters (glibc malloc.h) and what they are set to
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
# device nodes of TPUs (accel, vfio on v5+) and NVIDIA GPUs
_ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def cpu_only() -> bool:
  """Whether jax will run on the CPU: jax_platforms (set by JAX_PLATFORMS) names cpu first,
  or, with no platform named, the host has no TPU or NVIDIA GPU device node."""
  platforms = jax.config.jax_platforms
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def reuse_freed_memory(enabled: bool = True) -> str:
  """Applies SETTINGS where they help and can take effect; returns what it did, for the log:
  'applied', or why not. `enabled`: the config's `host_malloc_reuse`."""
  if not enabled:
    return "off: config.host_malloc_reuse is false"
  if os.environ.get(OPT_OUT, "") not in ("", "0"):
    return f"skipped: {OPT_OUT} is set"
  if not sys.platform.startswith("linux") or not (
      os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
    return "skipped: not glibc"
  if not cpu_only():
    return "skipped: not a CPU run"
  if xla_bridge.backends_are_initialized():
    return "skipped: jax's backend already started (its threads keep their arenas)"
  libc = ctypes.CDLL(None)
  failed = [param for param, value in SETTINGS if libc.mallopt(param, value) != 1]
  if failed:
    return f"failed: mallopt refused parameters {failed}"
  return "applied"
