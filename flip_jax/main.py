"""Entry point: python -m flip_jax.main --config=configs/flip_debug.py --workdir=DIR.

Any config key can be overridden: --config.mask_ratio=0.75 --config.batch_size=4096.
Running the same command again resumes from the newest complete checkpoint in DIR.
On several processes, one that dies makes the others exit non-zero (see
flip_jax/distributed.py); restarting all of them with the same command resumes.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flip_jax import config_check, console, distributed, host_malloc, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  alike = (config_check.ConfigError, train.NonFiniteError)  # every process stops alike
  # before jax starts its backend
  malloc = host_malloc.reuse_freed_memory(_CONFIG.value.host_malloc_reuse)
  try:
    distributed.initialize(_CONFIG.value)
    log_file = console.route_logs(_WORKDIR.value)
    console.say(f"flip_jax: {jax.device_count()} {jax.default_backend()} device(s), process "
                f"{jax.process_index()} of {jax.process_count()}; logs in {log_file}; host "
                f"malloc reuse: {malloc}")
    distributed.run(lambda: train.run(_CONFIG.value, _WORKDIR.value), alike=alike)
  except alike as err:
    sys.exit(f"flip_jax: {err}")


if __name__ == "__main__":
  app.run(main)
