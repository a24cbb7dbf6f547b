"""Metric writers: TensorBoard (clu) plus `metrics.jsonl`, one JSON object per logged step."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """Appends {'step': s, name: value, ...} lines; the file survives restarts (append mode)."""

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create(workdir: str, *, is_main: bool) -> metric_writers.MetricWriter:
  """TensorBoard + metrics.jsonl on process 0; log-only elsewhere."""
  if not is_main:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> None:
  """Drops rows logged after `step` (a run killed after its last checkpoint re-logs them)."""
  if not os.path.exists(path):
    return
  rows = [r for r in read_jsonl(path) if r["step"] <= step]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
