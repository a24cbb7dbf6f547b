"""The report of a data-scaling study: study.csv, correlations.json and PNG plots.

Plots, as in the paper (Xie et al., CVPR 2023): per model, the validation loss (solid) and
the final training loss (dashed) against the training length, one line per data fraction
(small fractions overfit: training loss down, validation loss up); and the downstream score
against the validation loss over all runs, with Pearson's r.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np

COLUMNS = ("run", "model", "fraction", "length", "steps", "train_loss", "val_loss",
           "finetune_top1", "finetune_val_loss", "pretrain_seconds", "finetune_seconds")


def pearson(x, y) -> float | None:
  """Pearson's r; None with fewer than 3 points or a constant series."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3 or x.std() == 0 or y.std() == 0:
    return None
  return float(np.corrcoef(x, y)[0, 1])


def collect(workdir: str, runs) -> list[dict]:
  rows = []
  for run in runs:
    path = os.path.join(workdir, run.name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
  return rows


def write_csv(path: str, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def correlations(rows: list[dict]) -> dict:
  scored = [r for r in rows if r.get("finetune_top1") is not None and r.get("val_loss")
            is not None]
  out = {"n": len(scored),
         "val_loss_vs_finetune_top1": pearson([r["val_loss"] for r in scored],
                                              [r["finetune_top1"] for r in scored]),
         "train_loss_vs_finetune_top1": pearson([r["train_loss"] for r in scored],
                                                [r["finetune_top1"] for r in scored]),
         "per_model": {}}
  for model in sorted({r["model"] for r in scored}):
    mine = [r for r in scored if r["model"] == model]
    out["per_model"][model] = pearson([r["val_loss"] for r in mine],
                                      [r["finetune_top1"] for r in mine])
  return out


def plot(workdir: str, rows: list[dict], corr: dict) -> list[str]:
  import matplotlib  # here: only plotting needs it, and its import builds a font cache
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # after use("Agg"): no display backend is loaded

  paths = []
  models = sorted({r["model"] for r in rows})
  fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    mine = [r for r in rows if r["model"] == model]
    for i, fraction in enumerate(sorted({r["fraction"] for r in mine})):
      pts = sorted((r["length"], r["val_loss"], r["train_loss"]) for r in mine
                   if r["fraction"] == fraction)
      color = f"C{i}"
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color,
              label=f"{fraction:g} of data: validation")
      ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", color=color, alpha=0.6,
              label=f"{fraction:g} of data: training")
    ax.set(title=model, xlabel="training length (samples)", ylabel="pre-training loss")
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "val_loss_vs_length.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  scored = [r for r in rows if r.get("finetune_top1") is not None]
  if scored:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, model in enumerate(models):
      mine = [r for r in scored if r["model"] == model]
      ax.scatter([r["val_loss"] for r in mine], [r["finetune_top1"] for r in mine],
                 color=f"C{i}", label=model)
      for r in mine:
        ax.annotate(f"{r['fraction']:g}/{r['length']}", (r["val_loss"], r["finetune_top1"]),
                    fontsize=6)
    r = corr["val_loss_vs_finetune_top1"]
    ax.set(title=f"fine-tuning top-1 vs validation loss (Pearson r = "
                 f"{'n/a' if r is None else f'{r:.3f}'})",
           xlabel="pre-training validation loss (fixed masks)", ylabel="fine-tuning top-1")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(workdir, "finetune_vs_val_loss.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths


def write(workdir: str, runs) -> dict:
  """Writes the report of every finished run; returns its paths and correlations."""
  rows = collect(workdir, runs)
  csv_path = os.path.join(workdir, "study.csv")
  write_csv(csv_path, rows)
  corr = correlations(rows)
  with open(os.path.join(workdir, "correlations.json"), "w") as f:
    json.dump(corr, f, indent=2)
  plots = plot(workdir, rows, corr) if rows else []
  return {"runs_finished": len(rows), "runs": len(runs), "csv": csv_path,
          "correlations": corr, "plots": plots}
