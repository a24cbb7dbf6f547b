"""The benchmark compiles the real train step per setting and prints one JSON line each."""
import json

import pytest

from flip_jax import benchmark, objectives
from helpers import tiny_flip_config


@pytest.mark.parametrize("in_turns", [False, True])
def test_benchmark_prints_one_json_line_per_mask_ratio(capsys, in_turns):
  c = tiny_flip_config()
  rows = benchmark.run(c, ["0", "0.5"], batch=8, steps=2, in_turns=in_turns)
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
  assert printed == rows and [r["mask_ratio"] for r in rows] == [0.0, 0.5]
  assert rows[0]["speedup_vs_unmasked"] == 1.0
  for r in rows:
    assert r["step_s"] > 0 and 0 < r["mfu"] and r["peak_source"].startswith("measured")
    assert r["images_per_s"] == pytest.approx(8 / r["step_s"], rel=1e-3)
  # FLOPs follow the analytic count: masking halves the image tokens, not the text's.
  c.mask_ratio, c.batch_size = 0.5, 8
  assert rows[1]["model_flops_per_step"] == objectives.get(c).flops_per_sample() * 8
  assert rows[1]["model_flops_per_step"] < rows[0]["model_flops_per_step"]
  # The gradient-free tail (optimizer update, norms) is timed alone for every setting.
  for r in rows:
    assert r["update_s"] > 0
    assert r["update_share"] == pytest.approx(r["update_s"] / r["step_s"], abs=1e-3)
