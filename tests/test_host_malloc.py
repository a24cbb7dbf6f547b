"""host_malloc: on CPU, a jitted function's freed scratch is reused by its next call, not
paged in anew -- counted in page faults (the kernel's count, not a timing) -- and the
results are the same."""
import json
import os
import resource
import subprocess
import sys

from helpers import ROOT

# A program whose intermediates (a cumulative sum of a 64 MiB array, and its transpose) live in
# XLA's temporary buffer; prints the reuse status, the buffer's size, the minor page faults
# per call of three calls after five (XLA may free one call's buffer after the next one has
# allocated its own, so the heap holds two before it stops growing) and the result.
PROGRAM = """
import json, resource, time
from flip_jax import host_malloc
status = host_malloc.reuse_freed_memory()
import jax, jax.numpy as jnp
def f(x, w):
  h = jnp.cumsum(x, axis=0)
  return (h @ w).sum(0) + (h.T @ w).sum(0)
x = jnp.arange(4096 * 4096, dtype=jnp.float32).reshape(4096, 4096) % 7
w = (jnp.arange(4096 * 16, dtype=jnp.float32).reshape(4096, 16) % 5) / 5
f = jax.jit(f).lower(x, w).compile()
for _ in range(5):
  f(x, w).block_until_ready()
  time.sleep(0.05)  # a loop's host work between steps: XLA frees the buffer after returning
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  out = f(x, w).block_until_ready()
  time.sleep(0.05)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"status": status, "temp_bytes": f.memory_analysis().temp_size_in_bytes,
                  "faults": faults, "out": out.tolist()}))
"""


def run(**env) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT, **env)
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout
  return json.loads(out.splitlines()[-1])


def test_a_steps_scratch_is_reused_not_paged_in_again():
  reused, system = run(), run(FLIP_JAX_SYSTEM_MALLOC="1")
  assert reused["status"] == "applied"
  assert system["status"] == "skipped: FLIP_JAX_SYSTEM_MALLOC is set"
  pages = reused["temp_bytes"] // resource.getpagesize()
  assert reused["temp_bytes"] == system["temp_bytes"] >= 128 << 20
  assert system["faults"] > 0.9 * pages, system  # every page of it, every call
  assert reused["faults"] < 0.01 * pages, reused
  assert reused["out"] == system["out"]


def test_it_applies_only_where_it_can_take_effect():
  probe = ("import os, jax\nfrom flip_jax import host_malloc\n"
           "print(host_malloc.reuse_freed_memory(False))\n"
           "print(host_malloc.cpu_only(), host_malloc.reuse_freed_memory())\n"
           "jax.devices()\nprint(host_malloc.reuse_freed_memory())\n")
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
  tpu = subprocess.run([sys.executable, "-c", probe.split("jax.devices()")[0]],
                       env=dict(env, JAX_PLATFORMS="tpu"), capture_output=True, text=True,
                       check=True).stdout
  assert tpu.splitlines() == ["off: config.host_malloc_reuse is false",
                              "False skipped: not a CPU run"]
  cpu = subprocess.run([sys.executable, "-c", probe], env=dict(env, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert cpu == ["off: config.host_malloc_reuse is false", "True applied",
                 "skipped: jax's backend already started (its threads keep their arenas)"]
