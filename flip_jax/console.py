"""What a training run shows a user: a line per event worth reading.

The console gets one progress line per log step (step, %, ETA, img/s, loss, lr), each
evaluation's results, one line per checkpoint saved, and a closing summary (final metrics,
best evaluation, wall time, where the checkpoint is). Library INFO logs (Orbax's save
chatter, clu's scalar and progress logs, ours) go to `<workdir>/log.txt` instead; warnings
and errors still reach the console. absl's `--verbosity=0` or higher, given explicitly,
keeps INFO on the console too. Only process 0 prints.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
import time

import jax
from absl import flags, logging

LOG_FILE = "log.txt"


def route_logs(workdir: str) -> str:
  """Sends INFO logs to `<workdir>/log.txt` (process i > 0: `log.<i>.txt`) and keeps the
  console to warnings (unless --verbosity was given); returns the log file's path."""
  os.makedirs(workdir, exist_ok=True)
  index = jax.process_index()
  path = os.path.join(workdir, LOG_FILE if index == 0 else LOG_FILE.replace(".", f".{index}."))
  to_file = py_logging.FileHandler(path)
  to_file.setLevel(py_logging.INFO)
  to_file.setFormatter(logging.PythonFormatter())
  root = py_logging.getLogger()
  root.addHandler(to_file)
  root.setLevel(min(root.level or py_logging.INFO, py_logging.INFO))
  verbosity = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
  if verbosity is None or not verbosity.present:
    logging.get_absl_handler().setLevel(py_logging.WARNING)
  return path


def say(message: str) -> None:
  """One console line (process 0), also kept in the log file."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v: float) -> str:
  return f"{v:.4g}"


class Progress:
  """Progress lines and the closing summary of one `train.run`."""

  def __init__(self, total_steps: int, start_step: int):
    self.total, self.start = total_steps, start_step
    self.t0 = time.time()
    self.t_first = None  # wall time when the first step finished (compilation excluded)
    self.best: dict[str, float] = {}

  def step_done(self, step: int) -> None:
    if self.t_first is None:
      self.t_first, self.first_step = time.time(), step

  def log(self, step: int, scalars: dict) -> None:
    done = step - self.first_step if self.t_first is not None else 0
    eta = ""
    if done > 0:
      eta = duration((time.time() - self.t_first) / done * (self.total - step))
    say(f"step {step}/{self.total} ({100 * step / self.total:.0f}%)"
        + (f"  ETA {eta}" if eta else "")
        + f"  {scalars.get('images_per_s', 0):.1f} img/s"
        + f"  loss {_value(scalars['loss'])}" * ("loss" in scalars)
        + f"  lr {scalars['lr']:.3g}" * ("lr" in scalars))

  def evaluated(self, step: int, name: str, results: dict) -> None:
    say(f"eval {name} @ step {step}: "
        + ", ".join(f"{k} {_value(v)}" for k, v in sorted(results.items())))
    for k, v in results.items():
      key = f"eval/{name}/{k}"
      better = min if "loss" in k else max  # losses fall; accuracies and recalls rise
      self.best[key] = better(self.best.get(key, v), v)

  @staticmethod
  def saved(step: int, directory: str) -> None:
    say(f"checkpoint step {step} saved in {directory}")

  def summary(self, step: int, last: dict, checkpoint_dir: str, latest: int | None) -> None:
    say(f"done: step {step}/{self.total} in {duration(time.time() - self.t0)}")
    final = {k: v for k, v in last.items()
             if k in ("loss", "lr", "images_per_s", "nonfinite_steps") or k.startswith("data/")}
    if final:
      say("  final: " + ", ".join(f"{k} {_value(v)}" for k, v in sorted(final.items())))
    for key, value in sorted(self.best.items()):
      say(f"  best {key}: {_value(value)}")
    if latest is not None:
      say(f"  checkpoint: step {latest} in {checkpoint_dir}")
