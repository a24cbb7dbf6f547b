"""Data-scaling studies: a grid of pre-training runs, each scored downstream, then a report.

  python -m flip_jax.study --config=configs/studies/data_scaling_debug.py --workdir=DIR

A study config (`get_config()`) lists `models` ({name: dict(config='configs/x.py[:arg]',
overrides={nested dict of config keys: value})}; `overrides` at the top apply to all), `fractions` (config.data.fraction) and `lengths`
(config.total_samples; `warmup_fraction`, if set, makes each run's warmup that share of
its length). Every (model, fraction, length) is one run in DIR/<run>:
pre-training in DIR/<run>/pretrain, validated at its last step on held-out data with the
objective's fixed-mask validation loss (`val`: the val_loss evaluator's settings), then
fine-tuned with the classify objective from the pre-trained encoder in
DIR/<run>/finetune (`downstream`: num_classes, overrides) and scored by held-out top-1.

Every run's config is built and validated before anything trains, so a bad fraction, an
image size the SwinV2 windows do not divide, or a grid naming an unknown config fails at
once. Runs go one after another in this process; a run with its result.json is skipped, an
interrupted one resumes from its checkpoints. `--print_commands` writes DIR/commands.sh
with one `--only=<run>` command per run to launch as independent jobs on a cluster, then
`--collect` writes the report: study.csv, correlations.json (Pearson r of validation loss
and downstream score) and PNG plots (see study_report.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402

from flip_jax import config_check, study_report, train, writers  # noqa: E402
from flip_jax.recipes import classify as classify_recipe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = "study_val"  # the evaluator the study adds to every run
RESULT = "result.json"


class StudyError(ValueError):
  pass


@dataclasses.dataclass
class Run:
  name: str
  model: str
  fraction: float
  length: int
  pretrain: ml_collections.ConfigDict
  finetune: ml_collections.ConfigDict | None

  def fingerprint(self) -> str:
    text = self.pretrain.to_json_best_effort(sort_keys=True) + (
        self.finetune.to_json_best_effort(sort_keys=True) if self.finetune else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ grid expansion

def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """'path/to/config.py[:arg]' -> get_config(arg); relative paths from the working
  directory, then from the repository root."""
  path, _, arg = spec.partition(":")
  candidates = [path] if os.path.isabs(path) else [path, os.path.join(ROOT, path)]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise StudyError(f"no config file {path!r} (looked in {candidates})")
  module_spec = importlib.util.spec_from_file_location(
      "study_config_" + hashlib.md5(found.encode()).hexdigest()[:8], found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides, prefix: str = "") -> None:
  """Sets each leaf of the nested `overrides` dict at the same path of `config`; an unknown
  key is an error (a typo must not become a new, ignored key)."""
  for key, value in dict(overrides).items():
    where = f"{prefix}{key}"
    if key not in config:
      raise StudyError(f"override {where!r}: the config has no such key")
    if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
        config[key], ml_collections.ConfigDict):
      apply_overrides(config[key], value, where + ".")
    else:
      config[key] = value


def _fraction_tag(f: float) -> str:
  return f"{f:g}".replace(".", "p")


def pretrain_config(study, model_name: str, fraction: float, length: int):
  spec = study.models[model_name]
  c = load_config_file(spec["config"])
  apply_overrides(c, study.get("overrides", {}))  # every model's, then this model's
  apply_overrides(c, spec.get("overrides", {}))
  c.data.fraction = fraction
  c.total_samples = int(length)
  if study.get("warmup_fraction") is not None:  # warmup as a share of each run's length
    c.optim.warmup_samples = int(study.warmup_fraction * c.total_samples)
  c.evals = ml_collections.ConfigDict({VAL: dict(type="val_loss", every_steps=0,
                                                 **dict(study.val))})
  return c


def finetune_config(study, pre: ml_collections.ConfigDict, pre_dir: str):
  down = study.downstream
  c = classify_recipe.from_pretraining(pre, pre_dir, int(down.num_classes))
  apply_overrides(c, down.get("overrides", {}))
  c.evals = ml_collections.ConfigDict({VAL: dict(type="val_loss", every_steps=0,
                                                 **dict(down.val))})
  return c


def expand(study: ml_collections.ConfigDict, workdir: str, num_devices: int) -> list[Run]:
  """Every run of the grid with its validated configs; all errors at once, before training."""

  errors, runs = [], []
  for key in ("models", "fractions", "lengths"):
    if not study.get(key):
      errors.append(f"study.{key}: empty or missing")
  if errors:
    raise StudyError("invalid study:\n  " + "\n  ".join(errors))
  for f in study.fractions:
    if not 0.0 < f <= 1.0:
      errors.append(f"study.fractions: {f} is not in (0, 1]")
  for model in study.models:
    for fraction in study.fractions:
      for length in study.lengths:
        name = f"{model}-frac{_fraction_tag(fraction)}-len{int(length)}"
        where = f"run {name}"
        try:
          pre = pretrain_config(study, model, fraction, length)
          config_check.validate(pre, num_devices)
          ft = None
          if study.get("downstream"):
            ft = finetune_config(study, pre, os.path.join(workdir, name, "pretrain"))
            where = f"run {name} (fine-tuning)"
            config_check.validate(ft, num_devices)
        except Exception as err:  # noqa: BLE001  (a config file may raise anything)
          detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
          errors.append(f"{where}: {detail}")
          continue
        runs.append(Run(name, model, float(fraction), int(length), pre, ft))
  if errors:
    raise StudyError("invalid study (nothing was run):\n  " + "\n  ".join(
        dict.fromkeys(errors)))
  return runs


# ------------------------------------------------------------------ running

def _last(rows: list[dict], key: str):
  values = [r[key] for r in rows if key in r]
  return float(values[-1]) if values else None


def _train(config, workdir: str) -> tuple[list[dict], float]:
  t = time.time()
  train.run(config, workdir)
  return writers.read_jsonl(os.path.join(workdir, "metrics.jsonl")), time.time() - t


def run_one(run: Run, workdir: str) -> dict:
  """Pre-train, validate, fine-tune and score one run; results in <run>/result.json."""
  run_dir = os.path.join(workdir, run.name)
  path = os.path.join(run_dir, RESULT)
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
    if result["fingerprint"] != run.fingerprint():
      raise StudyError(f"{run_dir} holds results of a different config for run {run.name}; "
                       "move it away or restore the study config")
    print(f"[study] {run.name}: done before, skipped", flush=True)
    return result
  print(f"[study] {run.name}: pre-training", flush=True)
  rows, t_pre = _train(run.pretrain, os.path.join(run_dir, "pretrain"))
  result = dict(run=run.name, model=run.model, fraction=run.fraction, length=run.length,
                steps=train.total_steps(run.pretrain), train_loss=_last(rows, "loss"), val_loss=_last(rows, f"eval/{VAL}/loss"),
                pretrain_seconds=round(t_pre, 1), fingerprint=run.fingerprint())
  if run.finetune is not None:
    print(f"[study] {run.name}: fine-tuning", flush=True)
    rows, t_ft = _train(run.finetune, os.path.join(run_dir, "finetune"))
    result.update(finetune_top1=_last(rows, f"eval/{VAL}/top1"),
                  finetune_val_loss=_last(rows, f"eval/{VAL}/loss"),
                  finetune_seconds=round(t_ft, 1))
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)  # a crash never leaves a half-written result
  print(f"[study] {run.name}: {json.dumps({k: v for k, v in result.items() if k != 'run'})}",
        flush=True)
  return result


def commands(runs: list[Run], study_flag: str, workdir: str, overrides=()) -> list[str]:
  base = [sys.executable, "-m", "flip_jax.study", f"--config={study_flag}", *overrides,
          f"--workdir={workdir}"]
  lines = [shlex.join(base + [f"--only={r.name}"]) for r in runs]
  return lines + [shlex.join(base + ["--collect"])]


# ------------------------------------------------------------------ entry point

def main(study, study_flag: str, workdir: str, *, only: str = "", collect: bool = False,
         print_commands: bool = False, overrides=()) -> dict | None:
  """`overrides`: the --config.* flags given, repeated in the printed commands."""


  os.makedirs(workdir, exist_ok=True)
  runs = expand(study, workdir, jax.device_count())
  if print_commands:
    lines = commands(runs, study_flag, workdir, overrides)
    with open(os.path.join(workdir, "commands.sh"), "w") as f:
      f.write("#!/bin/sh\n# one job per run (any order, any machine sharing DIR), then the "
              "report\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return None
  if only:
    chosen = [r for r in runs if r.name == only]
    if not chosen:
      raise StudyError(f"--only={only!r}: no such run; runs: {[r.name for r in runs]}")
    run_one(chosen[0], workdir)
    return None
  if study.get("compilation_cache", True):
    # Runs of one model share their programs (fractions change only the data), so the
    # persistent cache turns most compilations of a study into a disk read.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  t0 = time.time()
  if not collect:
    for run in runs:
      run_one(run, workdir)
  report = study_report.write(workdir, runs)
  report["wall_seconds"] = round(time.time() - t0, 1)
  print(json.dumps(report, indent=2), flush=True)
  return report


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _STUDY = config_flags.DEFINE_config_file("config", None, "A study config (configs/studies/).",
                                           lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None, "One folder per run, and the report.")
  _ONLY = flags.DEFINE_string("only", "", "Run just this run (a cluster job).")
  _COLLECT = flags.DEFINE_bool("collect", False, "Only write the report from finished runs.")
  _PRINT = flags.DEFINE_bool("print_commands", False,
                             "Write DIR/commands.sh (one job per run) and exit.")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    try:
      main(_STUDY.value, config_flags.get_config_filename(flags.FLAGS["config"]), _WORKDIR.value,
           only=_ONLY.value, collect=_COLLECT.value, print_commands=_PRINT.value,
           overrides=[a for a in sys.argv[1:] if a.startswith("--config.")])
    except StudyError as err:
      sys.exit(f"flip_jax.study: {err}")

  app.run(_main)
