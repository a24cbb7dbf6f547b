"""The largest batch that fits a topology, found by compiling (`plan --max_batch`).

The per-device batch is searched on a grid of `multiple` (8: tensor-core-friendly sizes)
with the mesh of the config. Each probe is one `plan.plan` compile. Memory grows about
linearly with the batch, so the next probe is the batch at which the line through the
two nearest probes (one that fits and one that does not, or the two largest that fit;
with one probe, through it and the train state, which does not grow with the batch)
reaches the capacity, kept off the bracket's outer eighths so that every probe shrinks
it (a safeguarded regula falsi); without a bracket the batch doubles.
It stops when the bracket is one grid step (or 1/32 of the batch, if that is more) wide,
or after `max_compiles` probes.

Capacity: what XLA said it can use when it refused a program (TPU), else the device's
(`hardware.Spec.hbm_bytes`; on GPUs the share of memory XLA is given). A deviceless GPU
compile never refuses a program, so there the fits column decides.
"""
from __future__ import annotations

import jax

from flip_jax import sharding


def _probe(config, topology, devices, per_device: int, dp: int, plan_fn) -> dict:
  c = config.copy_and_resolve_references()
  c.batch_size = per_device * dp
  c.total_samples = max(c.total_samples, c.batch_size)
  row = plan_fn(c, topology, devices)
  jax.clear_caches()  # one executable at a time (see plan.search)
  return row


def _capacity(row: dict) -> float:
  return row.get("xla_available_hbm") or row["hbm_capacity"]


def next_probe(fit: list[tuple[int, float]], unfit: list[tuple[int, float | None]],
               capacity: float, multiple: int, fixed: float = 0.0) -> int:
  """The next per-device batch to try, from the probes so far (batch, bytes per device);
  `fixed`: bytes that do not grow with the batch (the train state)."""
  lo = max(fit)[0] if fit else 0
  hi = min(unfit)[0] if unfit else None
  if hi is None:
    # Extrapolate from the two largest fitting probes, at most 4x; double without two.
    guess = 2 * lo
    if len(fit) >= 2:
      (b1, m1), (b2, m2) = sorted(fit)[-2:]
      if m2 > m1:
        guess = min(4 * lo, b2 + (capacity - m2) * (b2 - b1) / (m2 - m1))
    return max(lo + multiple, int(guess) // multiple * multiple)
  m_hi = min(unfit)[1]
  m_lo = max(fit)[1] if fit else None
  if m_lo is not None and m_hi is not None and m_hi > m_lo:
    guess = lo + (capacity - m_lo) * (hi - lo) / (m_hi - m_lo)
  elif m_hi is not None and lo == 0 and m_hi > fixed:
    guess = hi * (capacity - fixed) / (m_hi - fixed)
  else:
    guess = (lo + hi) / 2
  eighth = (hi - lo) / 8
  guess = min(max(guess, lo + eighth), hi - eighth)
  guess = int(guess) // multiple * multiple
  return min(max(guess, lo + multiple), hi - multiple)


def _resolution(lo: int, multiple: int) -> int:
  return max(multiple, lo // 32 // multiple * multiple)


def max_batch(config, topology: str, devices, *, multiple: int = 8, max_compiles: int = 6,
              plan_fn, report=print) -> dict:
  """{max_per_device_batch, max_global_batch, bracket, compiles, row (the largest that
  fits, or None)}; `plan_fn(config, topology, devices)` plans one batch (`plan.plan`),
  `report` sees every probe's row."""
  dp = sharding.data_parallel_size(config.mesh, len(devices))
  fit, unfit, rows = [], [], {}
  per_device = max(multiple, config.batch_size // dp // multiple * multiple)
  for _ in range(max_compiles):
    row = _probe(config, topology, devices, per_device, dp, plan_fn)
    report(row)
    rows[per_device] = row
    (fit if row["fits"] else unfit).append((per_device, row.get("hbm_bytes_per_device")))
    lo = max(fit)[0] if fit else 0
    hi = min(unfit)[0] if unfit else None
    if hi is not None and hi - lo <= _resolution(lo, multiple):
      break
    per_device = next_probe(fit, unfit, _capacity(row), multiple,
                            row.get("state_bytes_per_device", 0.0))
  lo = max(fit)[0] if fit else 0
  hi = min(unfit)[0] if unfit else None
  return dict(max_per_device_batch=lo, max_global_batch=lo * dp, data_parallel=dp,
              bracket=[lo, hi], exact=hi is not None and hi - lo <= _resolution(lo, multiple),
              compiles=len(rows), row=rows.get(lo))
