r"""Evaluates a checkpoint without training:

  python -m flip_jax.evaluate --checkpoint=DIR [--evals=zeroshot,retrieval_digits]
      [--set=NAME.KEY=VALUE ...] [--out=DIR]

DIR is a training workdir (its newest checkpoint) or an exported directory. --evals are
names of the checkpoint's `config.evals` or presets (flip_jax/evaluate/presets.py);
default: all of the config's. --set changes one key of one of them, e.g.
--set=zeroshot_imagenet.data_dir=/data/tfds. Prints a table and writes results.json to
--out (default: DIR). On several hosts start the same command on each (as for training).
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from flip_jax import distributed  # noqa: E402
from flip_jax.evaluate import standalone  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir or exported dir.")
_EVALS = flags.DEFINE_list("evals", [], "Evaluations to run (default: the config's).")
_SET = flags.DEFINE_multi_string("set", [], "NAME.KEY=VALUE override of one evaluation.")
_OUT = flags.DEFINE_string("out", None, "Where results.json goes (default: --checkpoint).")
_BATCH = flags.DEFINE_integer("device_batch", 64,
                              "Inputs per device in each feature-extraction step.")
flags.mark_flags_as_required(["checkpoint"])


def table(results: dict) -> str:
  rows = [(name, metric, f"{value:.6g}") for name, metrics in results.items()
          for metric, value in metrics.items()]
  widths = [max(len(r[i]) for r in rows + [("eval", "metric", "value")]) for i in range(3)]
  lines = [f"{'eval':<{widths[0]}}  {'metric':<{widths[1]}}  value"]
  lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
  return "\n".join(lines)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every restore at INFO
    logging.set_verbosity(logging.WARNING)
  config, _ = standalone.read_config(_CHECKPOINT.value)
  distributed.initialize(config)
  try:
    report = standalone.evaluate(_CHECKPOINT.value, _EVALS.value, _SET.value,
                                 device_batch=_BATCH.value)
  except (ValueError, FileNotFoundError) as err:
    sys.exit(f"flip_jax.evaluate: {err}")
  if jax.process_index() == 0:
    print(table(report["results"]))
    out = _OUT.value or _CHECKPOINT.value
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)
