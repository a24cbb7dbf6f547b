"""JAX's persistent compilation cache: a restart on the same topology loads the compiled
step instead of compiling it again (minutes for a pod-size model).

`config.compile_cache_dir`: '' = `<workdir>/compile_cache`, 'none' = off, anything else
a directory or a `gs://` path (JAX reads and writes it through etils' epath).
"""
from __future__ import annotations

import os

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

OFF = "none"


def directory(config, workdir: str) -> str | None:
  """Where the cache lives for this run, or None when it is off."""
  path = config.compile_cache_dir
  if path == OFF:
    return None
  return path or os.path.join(workdir, "compile_cache")


def enable(config, workdir: str) -> str | None:
  """Points JAX's persistent cache at this run's directory (or turns it off) and returns it.

  JAX opens its cache at the first compilation and keeps it; a process that trains twice
  (tests, studies) switches it here when the directory changes."""
  path = directory(config, workdir)
  enabled = path is not None
  if (path, enabled) == (jax.config.jax_compilation_cache_dir,
                         jax.config.jax_enable_compilation_cache):
    return path
  compilation_cache.reset_cache()
  jax.config.update("jax_enable_compilation_cache", enabled)
  jax.config.update("jax_compilation_cache_dir", path)
  # Every compile of the run is cached (the default skips those under 1 s): the step of
  # a debug model compiles in about that, a resume should skip it as well.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logging.info("persistent compilation cache: %s", path or "off")
  return path
