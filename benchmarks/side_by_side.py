"""flip_jax's train step and open_clip's, timed in turns on the same machine.

  python benchmarks/side_by_side.py --config=configs/flip_b16.py \\
      --torch_python=/path/to/torch/venv/bin/python --mask_ratios=0,0.5,0.75 \\
      --batch=8 --context_length=32 --rounds=8 --threads=2

Run with flip_jax's Python. It starts `benchmarks/open_clip_reference.py --serve` with the
Python of an environment that has torch and open_clip_torch, and then, per mask ratio,
builds both steps (`flip_jax.stepper.Stepper`, open_clip's `make_step`), warms both up
and times them in turns: one step of one, one step of the other, `--rounds` times each,
the order swapped every round, a pause between steps so that neither side's threads still
spin when the other starts. Running the two one after the other (`flip_jax.benchmark`,
then `open_clip_reference.py`) lets a machine whose speed drifts over minutes favour one
side; in turns, both sample the same minutes.

One JSON line per mask ratio: each side's median step seconds and images/s, their ratio
(`ours_over_open_clip`, of images/s), the median of the per-round ratios, each side's median
user and system CPU seconds and page faults per step, and the CPU seconds it used between
its steps (the pauses and the other side's step: `ours_idle_cpu_s`, ...), and each side's
`speedup_vs_unmasked` (its median at this ratio against its own at mask ratio 0). Needs
torch only in the other environment; not part of the tests.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from flip_jax import host_malloc
from flip_jax.stepper import Stepper, setting_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from open_clip_reference import Timed  # noqa: E402  (needs no torch)

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file", lock_config=False)
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None,
                                    "Python of an environment with torch and open_clip_torch")
_MODEL = flags.DEFINE_string("model", "ViT-B-16", "open_clip model name")
_MASKS = flags.DEFINE_list("mask_ratios", ["0", "0.5", "0.75"], "mask ratios to compare")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch size, both sides")
_CONTEXT = flags.DEFINE_integer("context_length", 32, "text length, both sides")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "timed steps per side and mask ratio")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (match the cores jax uses)")
_PAUSE = flags.DEFINE_float("pause_s", 0.5, "idle seconds between two steps")

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "open_clip_reference.py")


class OpenClip:
  """open_clip_reference.py --serve in its own environment."""

  def __init__(self, python: str, model: str, batch: int, context_length: int, threads: int):
    self.proc = subprocess.Popen(
        [python, REFERENCE, "--serve", f"--model={model}", f"--batch={batch}",
         f"--context_length={context_length}", f"--threads={threads}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.model = model

  def ask(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"open_clip_reference.py exited (code {self.proc.wait()}) on "
                         f"{command!r}")
    reply = json.loads(line)
    if "error" in reply:
      raise RuntimeError(reply["error"])
    return reply

  def close(self):
    self.proc.stdin.write("quit\n")
    self.proc.stdin.close()
    self.proc.wait()


def compare(config, reference: OpenClip, mask_ratio: float, batch: int, rounds: int,
            pause_s: float) -> dict:
  """Median seconds of `rounds` steps of each side, taken in turns."""
  c = setting_config(config, batch, mask_ratio)
  stepper = Stepper(c)
  stepper()  # compile + warm-up
  ours = Timed(stepper)
  versions = reference.ask(f"setup {mask_ratio}")

  steps = {"ours": [], "open_clip": []}
  for i in range(rounds):
    order = (("ours", ours), ("open_clip", functools.partial(reference.ask, "step")))
    for name, step in order if i % 2 == 0 else order[::-1]:
      time.sleep(pause_s)
      steps[name].append(step())
  del stepper, ours, order
  gc.collect()
  times = {k: [s["step_s"] for s in v] for k, v in steps.items()}
  med = {k: statistics.median(v) for k, v in times.items()}
  # Each side's median CPU seconds and page faults per step: the kernel's share (sys_s)
  # shows a side paging its memory in anew; idle_cpu_s, what a side used between its steps
  # (threads spinning, an allocator trimming), would slow the other side's step.
  cpu = {f"{k}_{field}": round(statistics.median(s[field] for s in v), 3)
         for k, v in steps.items() for field in ("user_s", "sys_s", "page_faults", "idle_cpu_s")}
  return dict(config=c.objective, mask_ratio=mask_ratio, batch=batch, rounds=rounds,
              ours_step_s=round(med["ours"], 5), open_clip_step_s=round(med["open_clip"], 5),
              ours_images_per_s=round(batch / med["ours"], 3),
              open_clip_images_per_s=round(batch / med["open_clip"], 3),
              ours_over_open_clip=round(med["open_clip"] / med["ours"], 3),
              median_round_ratio=round(statistics.median(
                  b / a for a, b in zip(times["ours"], times["open_clip"])), 3),
              ours_all_s=[round(t, 3) for t in times["ours"]],
              open_clip_all_s=[round(t, 3) for t in times["open_clip"]], **cpu,
              open_clip_model=reference.model, open_clip_threads=versions["threads"],
              open_clip=versions["open_clip"],
              torch=versions["torch"])


def main(argv):
  del argv
  config = _CONFIG.value
  # as flip_jax.main and flip_jax.benchmark do; open_clip runs with glibc's defaults
  malloc = host_malloc.reuse_freed_memory(config.host_malloc_reuse)
  reference = OpenClip(_TORCH_PYTHON.value, _MODEL.value, _BATCH.value, _CONTEXT.value,
                       _THREADS.value)
  config.text_len = _CONTEXT.value
  base = None
  try:
    for r in (float(x) for x in _MASKS.value):
      row = compare(config, reference, r, _BATCH.value, _ROUNDS.value, _PAUSE.value)
      row["ours_host_malloc"] = malloc
      if r == 0.0:
        base = row
      if base is not None:
        row["ours_speedup_vs_unmasked"] = round(base["ours_step_s"] / row["ours_step_s"], 3)
        row["open_clip_speedup_vs_unmasked"] = round(
            base["open_clip_step_s"] / row["open_clip_step_s"], 3)
      print(json.dumps(row), flush=True)
  finally:
    reference.close()


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "torch_python"])
  sys.exit(app.run(main))
