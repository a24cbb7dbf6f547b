"""`python -m flip_jax.evaluate` on a checkpoint reproduces exactly what the training loop
logged, from a training workdir and from an exported (params-only) directory."""
import json
import os
import subprocess
import sys

import pytest

from flip_jax import export, train, writers
from flip_jax.evaluate import standalone
from helpers import ROOT, tiny_flip_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step tiny FLIP run with zero-shot and retrieval evaluated at steps 2 and 4, and kNN
  on the initial weights (at_start) and at the end."""
  workdir = str(tmp_path_factory.mktemp("run"))
  c = tiny_flip_config()
  c.update(total_samples=16 * 4, log_every_steps=2, ckpt_every_steps=4, ckpt_async=False)
  c.evals = {"zeroshot": dict(type="zeroshot", every_steps=2),
             "retrieval": dict(type="retrieval", every_steps=2),
             "knn0": dict(type="knn", k=5, at_start=True)}
  train.run(c, workdir)
  logged = {}  # step -> every eval/... value written at that step
  for row in writers.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    evals = {k: v for k, v in row.items() if k.startswith("eval/")}
    if evals:
      logged.setdefault(row["step"], {}).update(evals)
  assert sorted(logged) == [0, 2, 4] and len(logged[4]) == 2 + 6 + 2
  assert set(logged[0]) == {"eval/knn0/top1", "eval/knn0/top5"}  # only the at_start one
  assert set(logged[2]) == set(logged[4]) - set(logged[0])
  return workdir, logged[4]


def test_command_line_reproduces_the_logged_numbers(trained, tmp_path):
  workdir, logged = trained
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "flip_jax.evaluate", f"--checkpoint={workdir}", f"--out={out}",
       "--evals=zeroshot,retrieval,knn_digits", "--set=knn_digits.k=5"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "results.json").read_text())
  assert report["step"] == 4
  results = report["results"]
  for name in ("zeroshot", "retrieval"):
    logged_here = {k.split("/")[2]: v for k, v in logged.items()
                   if k.startswith(f"eval/{name}/")}
    assert results[name] == logged_here  # exactly: same model, sharding, batches
  assert set(results["knn_digits"]) == {"top1", "top5"}
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ["eval", "metric", "value"]
  assert lines[1].split() == ["zeroshot", "top1", f"{logged['eval/zeroshot/top1']:.6g}"]


def test_exported_directory_gives_the_same_numbers(trained, tmp_path):
  workdir, logged = trained
  exported = export.export(workdir, "orbax", str(tmp_path / "exported"))
  report = standalone.evaluate(exported, ["zeroshot"])
  assert report["results"]["zeroshot"]["top1"] == logged["eval/zeroshot/top1"]


def test_unknown_evaluation_and_bad_override_are_named(trained):
  workdir, _ = trained
  with pytest.raises(ValueError, match=r"--evals: 'zeroshot_mnist' is neither"):
    standalone.evaluate(workdir, ["zeroshot_mnist"])
  with pytest.raises(ValueError, match=r"--set 'k=5': expected NAME.KEY=VALUE"):
    standalone.evaluate(workdir, ["knn_digits"], ["k=5"])
  with pytest.raises(ValueError, match=r"config.evals.knn_digits.kk: unknown key"):
    standalone.evaluate(workdir, ["knn_digits"], ["knn_digits.kk=5"])


def test_evaluation_imports_neither_the_trainer_nor_objectives():
  code = ("import sys, flip_jax.evaluate; print(' '.join(sys.modules)); "
          "import flip_jax.evaluate.standalone; print(' '.join(sys.modules))")
  evaluators, command = [set(line.split()) for line in subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
      text=True).stdout.splitlines()]
  assert "flip_jax.evaluate.knn" in evaluators
  assert not {"flip_jax.train", "flip_jax.objectives"} & evaluators
  assert "flip_jax.objectives" in command and "flip_jax.train" not in command
