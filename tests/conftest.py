"""Test set-up: CPU only, 8 simulated devices, absl flags parsed (grain workers need it)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _compile_cache_off_after_each_test():
  """train.run points JAX's persistent compilation cache at its workdir; the tests after it
  must not keep writing into that (deleted) temporary directory."""
  yield
  import jax
  if jax.config.jax_compilation_cache_dir is not None:
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
