"""Reusable model parts; none of them knows which method trains it."""
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  """'auto' -> bfloat16 on TPU/GPU, float32 on CPU."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  if name not in DTYPES:
    raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]
