"""Step-time benchmark of the real train step, one JSON line per setting.

  python -m flip_jax.benchmark --config=configs/flip_b16.py --mask_ratios=0,0.5,0.75 \
      --batch=8 --steps=3

`--sweep=extrema.num_masks=1,5,8` also varies one config key (every mask ratio x every
value; `speedup_vs_unmasked` is relative to the first setting at mask ratio 0). Every
setting compiles the trainer's jitted step (both towers, loss, optimizer update)
on random inputs in this one process, so ratios between settings (speedup_vs_unmasked)
are meaningful on a noisy machine; `--in_turns` compiles them all first and then times one
step of each per round, so that a machine whose speed drifts over minutes does not skew
those ratios either (at the cost of every setting's state in memory at once). MFU =
analytic model FLOPs / step time / peak, where the peak is the device's bf16 figure on
TPU/GPU (`flip_jax/hardware.py`, with its source) and a measured large float32 matmul on
CPU. An objective may name parts of its step
(`benchmark_parts`, e.g. EVA's frozen teacher forward), each then also timed alone and
reported as `<part>_s` and `<part>_share` of the step. Every setting also times the
step's gradient-free tail alone (`Trainer.apply_gradients`: guarded optimizer update,
EMA, norms) as `update_s`: a cost masking cannot shrink, which bounds the speed-up a
mask ratio can give. Objectives whose masking is not `config.mask_ratio` (EVA) get one
setting, not the sweep.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flip_jax import config_check, hardware, host_malloc, objectives, step_profile  # noqa: E402
from flip_jax.stepper import Stepper, setting_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file", lock_config=False)
_MASKS = flags.DEFINE_list("mask_ratios", ["0", "0.5", "0.75"], "mask ratios to compare")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch size (overrides the config)")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per setting (after one warm-up)")
_DTYPE = flags.DEFINE_string("dtype", None, "override config.dtype")
_PROFILE = flags.DEFINE_bool("profile", False, "also trace each setting's step with "
                              "jax.profiler and print where its time goes (a 'profile' line)")
_IN_TURNS = flags.DEFINE_bool("in_turns", False, "time the settings' steps in turns (all "
                               "compiled first, then one step of each per round): ratios "
                               "between settings that a drifting machine does not skew; "
                               "holds every setting's state in memory at once")
_SWEEP = flags.DEFINE_string("sweep", None, "KEY=V1,V2,...: also vary this config key (e.g. "
                             "extrema.num_masks=1,5,8); every mask ratio x every value")


def measured_matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """Best-of-`reps` float32 FLOP/s of an n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def device_peak() -> tuple[float, str, str]:
  dev = jax.devices()[0]
  kind = dev.device_kind
  if dev.platform == "cpu":
    return measured_matmul_peak() * jax.device_count(), "measured f32 2048^2 matmul", kind
  spec = hardware.spec_for(kind)
  return spec.peak_bf16 * jax.device_count(), spec.source, kind


def _median_seconds(fn, args, steps: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _median_seconds_donating(fn, state, arg, steps: int):
  """`_median_seconds` for `fn(state, arg) -> (state, out)` that donates its state: the
  state is threaded through the calls. Returns (median, the last state)."""
  state, out = fn(state, arg)  # compile + warm-up
  jax.block_until_ready((state, out))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, out = fn(state, arg)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t)
  return statistics.median(times), state


def time_step(config, steps: int, profile: bool = False
              ) -> tuple[float, dict[str, float], dict | None]:
  """Median wall seconds of the trainer's step on random inputs (after compile + warm-up),
  `profile_step` of it when `profile`, else None, and `time_parts` of it."""
  stepper = Stepper(config)
  if profile:
    stepper.compiled_text()  # before the warm-up: see profile_step
  stepper()  # compile + warm-up
  step_s = statistics.median([stepper() for _ in range(steps)])
  split = profile_step(stepper, steps) if profile else None
  return step_s, time_parts(stepper, steps), split


def profile_step(stepper: Stepper, steps: int) -> dict:
  """`steps` more steps traced and split into categories (`step_profile.profile`). Call
  `stepper.compiled_text()` before the warm-up and nothing that compiles between the timed
  steps and this: a compile's host allocations split the heap's free space, so that the
  traced steps page their scratch in anew (`page_faults_per_step`) and run slower than
  the timed ones."""
  with jax.set_mesh(stepper.mesh):
    split, stepper.state = step_profile.profile(stepper.trainer.step, stepper.state,
                                                stepper.batch, stepper.compiled_text(), steps)
  return split


def time_parts(stepper: Stepper, steps: int) -> dict[str, float]:
  """Median wall seconds of each of the objective's `benchmark_parts` and of
  `Trainer.apply_gradients` (as `update`) jitted on their own with the same shardings (on
  one device the step runs its ops in sequence, so a part alone takes about what it takes
  inside the step). Donates the stepper's state."""
  trainer, batch, state = stepper.trainer, stepper.batch, stepper.state
  with jax.set_mesh(stepper.mesh):
    parts = {}
    for name, fn in trainer.objective.benchmark_parts().items():
      part = jax.jit(lambda p, e, b, fn=fn: fn(nnx.merge(trainer.graphdef, p, e),
                                                 trainer.objective.prepare(b)))
      parts[name] = _median_seconds(part, (state["params"], state["extra"], batch), steps)
    # The tail alone, donating the state as the step does (so it updates in place).
    update = jax.jit(trainer.apply_gradients, in_shardings=(trainer.shardings,
                                                            trainer.shardings["params"]),
                     out_shardings=(trainer.shardings, None), donate_argnums=(0,))
    grads = jax.tree.map(jnp.zeros_like, state["params"])
    parts["update"], _ = _median_seconds_donating(update, state, grads, steps)
  stepper.state = None  # donated above
  return parts


def parse_sweep(config, sweep: str | None) -> tuple[str | None, list]:
  """'a.b=1,5,8' -> ('a.b', [1, 5, 8]), values cast to the type of config.a.b."""
  if not sweep:
    return None, [None]
  key, _, values = sweep.partition("=")
  node = config
  for part in key.split("."):
    if part not in node:
      raise ValueError(f"--sweep: config has no key {key!r}")
    node = node[part]
  cast = (lambda v: v.lower() in ("1", "true")) if isinstance(node, bool) else type(node)
  return key, [cast(v) for v in values.split(",")]


def _set(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def run(config, mask_ratios, batch: int, steps: int, sweep: str | None = None,
        profile: bool = False, in_turns: bool = False) -> list[dict]:
  """One row per (mask ratio, sweep value); a combination the config check rejects (e.g.
  more disjoint masks than fit) is printed with its error instead of timed. With
  `profile`, each row gets a `profile` dict (step_profile.profile: seconds and share per
  op category), also printed as a line of its own after the row. With `in_turns`, every
  setting is compiled and warmed up first and the timed steps go round the settings (one
  step each, `steps` rounds), so that a machine whose speed drifts over minutes does not
  skew the ratios between settings; all settings' states are then in memory at once."""

  peak, peak_source, kind = device_peak()
  rows, base = [], None
  if not objectives.get(config).uses_mask_ratio:
    mask_ratios = [config.mask_ratio]
  key, values = parse_sweep(config, sweep)
  settings = []
  for r, value in itertools.product(mask_ratios, values):
    c = setting_config(config, batch, float(r))
    setting = {"mask_ratio": float(r)}
    if key:
      _set(c, key, value)
      setting[key] = value
    try:
      config_check.validate(c, jax.device_count())
    except config_check.ConfigError as err:
      print(json.dumps(dict(setting, skipped=str(err))), flush=True)
      continue
    settings.append((setting, c))
  steppers, medians, splits = [], [], []
  if in_turns:
    steppers = [Stepper(c) for _, c in settings]
    for stepper in steppers:
      if profile:
        stepper.compiled_text()  # before the warm-ups: see profile_step
      stepper()  # compile + warm-up
    times = [[] for _ in steppers]
    for _ in range(steps):
      for stepper, seconds in zip(steppers, times):
        seconds.append(stepper())
    medians = [statistics.median(seconds) for seconds in times]
    splits = [profile_step(stepper, steps) if profile else None for stepper in steppers]
  for i, (setting, c) in enumerate(settings):
    r = setting["mask_ratio"]
    if in_turns:
      step_s, split = medians[i], splits[i]
      parts = time_parts(steppers[i], steps)
      steppers[i] = None
    else:
      step_s, parts, split = time_step(c, steps, profile)
    flops = objectives.get(c).flops_per_sample() * batch
    if base is None and float(r) == 0.0:
      base = step_s
    rows.append(dict(
        config=c.objective, **setting, batch=batch, dtype=str(c.dtype),
        step_s=round(step_s, 5), images_per_s=round(batch / step_s, 3),
        speedup_vs_unmasked=round(base / step_s, 3) if base else None,
        model_flops_per_step=flops, mfu=round(flops / step_s / peak, 4), peak_flops=peak,
        peak_source=peak_source, device_kind=kind, devices=jax.device_count()))
    for name, seconds in parts.items():  # e.g. EVA's teacher forward: teacher_s, teacher_share
      rows[-1].update({f"{name}_s": round(seconds, 5),
                       f"{name}_share": round(seconds / step_s, 3)})
    print(json.dumps(rows[-1]), flush=True)
    if split is not None:
      rows[-1]["profile"] = split
      print(json.dumps(dict(setting, profile=split, step_s=rows[-1]["step_s"])), flush=True)
  return rows


def main(argv):
  del argv
  config = _CONFIG.value
  print("flip_jax.benchmark: host malloc reuse: "
        f"{host_malloc.reuse_freed_memory(config.host_malloc_reuse)}", file=sys.stderr,
        flush=True)
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  run(config, _MASKS.value, _BATCH.value, _STEPS.value, _SWEEP.value, _PROFILE.value,
      _IN_TURNS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
