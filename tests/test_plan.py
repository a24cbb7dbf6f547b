"""Pod planner: the real train step compiled for TPU topologies by libtpu on this CPU."""
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from flip_jax import hardware, hlo_stats, plan, sharding, train
from helpers import ROOT, load_config

TOPOLOGY = "v4:2x2x1"  # one v4 host: 4 chips, each one megacore device (as on a v4-8 VM)


@pytest.fixture(scope="module")
def devices():
  return plan.topology_devices(TOPOLOGY)


@pytest.fixture(scope="module")
def fsdp_plans(devices):
  """flip_debug compiled for the v4 host without and with FSDP (every param eligible)."""
  out = {}
  for fsdp in (1, 4):
    c = load_config("flip_debug")
    c.mesh.update(data=-1, fsdp=fsdp)
    c.fsdp_min_size = 0
    out[fsdp] = plan.plan(c, TOPOLOGY, devices)
  return out


def test_v4_host_is_four_megacore_devices(devices):
  assert len(devices) == 4
  assert {d.device_kind for d in devices} == {"TPU v4"}
  assert {d.platform for d in devices} == {"tpu"}


def test_fsdp_shards_params_and_inserts_weight_collectives(fsdp_plans, devices):
  one, four = fsdp_plans[1], fsdp_plans[4]
  for row in (one, four):
    assert row["fits"] and row["devices"] == 4 and row["dtype"] == "bfloat16"
    assert row["global_batch"] == 128 and row["per_device_batch"] == 32
  assert one["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert four["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}

  # Per-device parameter bytes fall as 1/fsdp (a few small params have no dim that 4
  # divides and stay whole), and so do the executable's arguments (padded TPU layouts).
  assert 0.25 <= four["param_bytes_per_device"] / one["param_bytes_per_device"] < 0.26
  assert four["memory"]["arguments"] / one["memory"]["arguments"] < 0.4

  # Without FSDP no weight is gathered and no gradient reduce-scattered: the all-gathers
  # and the one reduce-scatter there are the contrastive loss's over the global batch.
  assert one["weight_collectives"]["all-gather"]["count"] == 0
  assert one["weight_collectives"]["reduce-scatter"]["count"] == 0
  assert one["collectives"]["all-gather"]["count"] > 0
  # With FSDP every sharded matrix is gathered for the forward pass (and again for the
  # backward; XLA moves the 1-D ones, LayerNorm scales and biases, by other collectives)
  # and gradients are reduce-scattered back to their shards.
  c = plan.resolve(load_config("flip_debug"))
  c.mesh.update(data=-1, fsdp=4)
  c.fsdp_min_size = 0
  trainer = train.Trainer(c, sharding.make_mesh(c.mesh, devices))
  specs = jax.tree.leaves(trainer.specs["params"],
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  shapes = jax.tree.leaves(trainer.abstract_state()["params"])
  matrices = sum(x.ndim >= 2 and "fsdp" in tuple(s) for x, s in zip(shapes, specs))
  assert matrices == 35  # 6 per block in 3 + 2 blocks, patch/pos/token embeddings, 2 projections
  assert four["weight_collectives"]["all-gather"]["count"] >= matrices
  assert four["weight_collectives"]["reduce-scatter"]["count"] > 0
  assert four["weight_collectives"]["all-gather"]["bytes"] > 0


def test_prediction_is_the_roofline_of_the_reported_numbers(fsdp_plans):
  row, spec = fsdp_plans[4], hardware.SPECS["TPU v4"]
  assert row["hbm_capacity"] == 32 * 2**30
  m = row["memory"]
  assert row["hbm_bytes_per_device"] == (m["arguments"] + m["outputs"] - m["aliased"]
                                         + m["temporaries"] + m["code"])
  assert row["compute_s"] == pytest.approx(row["flops_per_device"] / 275e12)
  assert row["memory_s"] == pytest.approx(row["bytes_accessed_per_device"] / 1200e9)
  assert row["collective_s"] == pytest.approx(row["collective_traffic_per_device"]
                                              / spec.ici_bw)
  assert row["predicted_step_s"] == pytest.approx(
      max(row["compute_s"], row["memory_s"]) + row["collective_s"])
  assert row["predicted_images_per_s"] == pytest.approx(128 / row["predicted_step_s"])
  assert row["predicted_mfu"] == pytest.approx(
      row["model_flops_per_step"] / 4 / row["predicted_step_s"] / 275e12)
  json.loads(plan.to_json(row))


def test_predict_by_hand():
  spec = hardware.SPECS["TPU v4"]
  out = plan.predict(spec, flops=275e12, bytes_accessed=600e9, traffic=spec.ici_bw / 4,
                     model_flops_per_device=137.5e12)
  assert out["compute_s"] == pytest.approx(1.0) and out["memory_s"] == pytest.approx(0.5)
  assert out["predicted_step_s"] == pytest.approx(1.25)
  assert out["predicted_mfu"] == pytest.approx(0.4)
  assert out["bound"] == "compute"


def test_config_that_cannot_fit_reports_the_shortfall(devices):
  c = load_config("flip_debug")
  c.batch_size = c.total_samples = 4 * 65536  # global InfoNCE logits: 64 GiB per device
  row = plan.plan(c, TOPOLOGY, devices)
  assert row["fits"] is False
  assert "RESOURCE_EXHAUSTED" in row["xla_error"]
  assert row["hbm_bytes_per_device"] > row["xla_available_hbm"]
  assert 28 * 2**30 < row["xla_available_hbm"] <= 32 * 2**30
  assert row["shortfall_gib"] == pytest.approx(
      (row["hbm_bytes_per_device"] - row["xla_available_hbm"]) / 2**30)
  assert row["shortfall_gib"] > 32


def test_oom_messages_parse():
  a = plan._oom_from("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                     "for HLO temporaries (47.33G) exceeds available HBM (15.48G).")
  assert a.required == pytest.approx(47.33 * 2**30)
  assert a.available == pytest.approx(15.48 * 2**30)
  b = plan._oom_from("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
                     "in memory space hbm. Used 21.95G of 15.48G hbm.\n Exceeded hbm capacity "
                     "by 6.47G.\n\nTotal hbm usage >= 22.47G:\n    reserved        530.00M\n")
  assert b.required == pytest.approx(22.47 * 2**30)
  assert b.available == pytest.approx(15.48 * 2**30)
  assert "\n" not in b.message


@pytest.mark.parametrize("name", ["v9:2x2", "tpu-v3-256", "v4:2x2x1x1", "v3:0x4"])
def test_unknown_topology_names_valid_examples(name):
  with pytest.raises(ValueError, match="valid examples: v3:4x4"):
    plan.topology_devices(name)


def test_topology_libtpu_rejects_is_one_line():
  with pytest.raises(ValueError) as err:
    plan.topology_devices("v3:3x3")  # not made of 2x2-chip hosts
  assert "valid examples" in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_topology_is_a_one_line_error():
  proc = subprocess.run(
      [sys.executable, "-m", "flip_jax.plan", "--config=configs/flip_debug.py",
       "--topology=v3-256"], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("flip_jax.plan: unknown TPU topology 'v3-256'")
  assert "valid examples" in lines[-1] and "Traceback" not in proc.stderr


def test_cli_prints_a_table_and_one_json_line_per_mask_ratio():
  proc = subprocess.run(
      [sys.executable, "-m", "flip_jax.plan", "--config=configs/flip_debug.py",
       f"--topology={TOPOLOGY}", "--mask_ratios=0,0.75", "--config.model.image.depth=1",
       "--config.model.text.depth=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert [r["mask_ratio"] for r in rows] == [0.0, 0.75]
  assert all(r["fits"] and r["topology"] == TOPOLOGY for r in rows)
  # each plan compiled in its own process: its compile time and that process's peak RSS
  assert all(r["compile_s"] > 0 and 0.2 < r["host_peak_rss_gib"] < 8 for r in rows)
  # masking 75% of the patches cuts the image tower's FLOPs
  assert rows[1]["flops_per_device"] < 0.8 * rows[0]["flops_per_device"]
  table = [l for l in proc.stdout.splitlines() if l and not l.startswith("{")]
  assert table[0].split()[:2] == ["mask", "mesh"] and len(table) == 3


def test_search_returns_the_fastest_plan_that_fits(devices):
  c = load_config("flip_debug")
  c.model.image.depth = c.model.text.depth = 1
  seen = []
  best = plan.search(c, TOPOLOGY, devices, fsdp_sizes=[4], per_device_batches=[8, 65536],
                     report=seen.append)
  assert [(r["mesh"]["fsdp"], r["per_device_batch"], r["fits"]) for r in seen] == [
      (4, 8, True), (4, 65536, False)]
  assert best is seen[0] and best["global_batch"] == 32


def test_search_candidates_default_grid():
  c = load_config("flip_debug")  # batch 128 over 4 devices: 32 per device
  pairs, dp = plan.candidates(c, 4)
  assert dp == 4
  assert pairs == [(f, b) for f in (1, 2, 4) for b in (16, 32, 64)]


HLO = """HloModule jit_step, entry_computation_layout={(f32[64,32]{1,0})->f32[16,32]{1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%all-reduce-scatter.1 (input.1: f32[64,32]) -> f32[16,32] {
  %input.1 = f32[64,32]{1,0:T(8,128)} parameter(0)
  %all-reduce.9 = f32[64,32]{1,0:T(8,128)} all-reduce(%input.1), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  ROOT %ds = f32[16,32]{1,0} dynamic-slice(%all-reduce.9, %z, %z), dynamic_slice_sizes={16,32}
}

%body (p: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%p), index=1
  %ag = bf16[32,128]{1,0:T(8,128)(2,1)} all-gather(%x), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %t = (s32[], bf16[8,128]{1,0}) tuple(%i, %x)
}

%cond (p: (s32[], bf16[8,128])) -> pred[] {
  %p = (s32[], bf16[8,128]{1,0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%branch_a (p.2: f32[4]) -> f32[4] {
  %p.2 = f32[4]{0} parameter(0)
  ROOT %cp = f32[4]{0} collective-permute(%p.2), channel_id=5, source_target_pairs={{0,1},{1,0}}
}

%branch_b (p.3: f32[4]) -> f32[4] {
  ROOT %p.3 = f32[4]{0} parameter(0)
}

ENTRY %main.1_spmd (param.0: f32[64,32], param.1: bf16[8,128]) -> f32[16,32] {
  %param.0 = f32[64,32]{1,0} parameter(0)
  %fusion.1 = f32[16,32]{1,0} fusion(%param.0), kind=kCustom, calls=%all-reduce-scatter.1
  %w = (s32[], bf16[8,128]{1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = (f32[10]{0}, f32[6]{0}) all-reduce(%a, %b), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, use_global_device_ids=true, to_apply=%add
  %rs = f32[32,1]{1,0} reduce-scatter(%param.0), channel_id=4, replica_groups={}, dimensions={1}, to_apply=%add
  %c = f32[4]{0} conditional(%pred, %v, %v), branch_computations={%branch_a, %branch_b}
  %ags = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(%x), channel_id=6, replica_groups=[2,4]<=[8], dimensions={0}
  %agd = bf16[32,128]{1,0} all-gather-done(%ags)
  %cl = f32[4]{0} call(%v), to_apply=%branch_a
  ROOT %r = f32[16,32]{1,0} copy(%fusion.1)
}
"""


def test_hlo_collectives_exact():
  records = hlo_stats.collectives(HLO, num_devices=8)
  got = [(r["kind"], r["bytes"], r["group"], r["traffic"], r["dims"]) for r in records]
  assert got == [
      ("reduce-scatter", 64 * 32 * 4, 4, 64 * 32 * 4 * 3 / 4, [(64, 32)]),  # fused form
      *[("all-gather", 32 * 128 * 2, 4, 32 * 128 * 2 * 3 / 4, [(32, 128)])] * 3,  # 3 trips
      ("all-reduce", 16 * 4, 4, 2 * 16 * 4 * 3 / 4, [(10,), (6,)]),
      ("reduce-scatter", 32 * 8 * 4, 8, 32 * 8 * 4 * 7 / 8, [(32, 8)]),  # all 8 devices
      ("collective-permute", 16, 8, 16.0, [(4,)]),  # a conditional's branch
      ("all-gather", 32 * 128 * 2, 4, 32 * 128 * 2 * 3 / 4, [(32, 128)]),  # async: its result
      ("collective-permute", 16, 8, 16.0, [(4,)]),  # a called computation
  ]
  summary = hlo_stats.summarize(records)
  assert summary["all-gather"]["count"] == 4 and summary["reduce-scatter"]["count"] == 2
  assert summary["all-to-all"] == {"count": 0, "bytes": 0, "traffic": 0.0}


def test_hardware_table_lookup():
  assert math.isclose(hardware.spec_for("TPU v3").peak_bf16 * 2, 123e12)
  assert hardware.spec_for("TPU v5 lite").peak_bf16 == 197e12
  assert hardware.spec_for("TPU v5").peak_bf16 == 459e12
  with pytest.raises(ValueError, match="SPECS"):
    hardware.spec_for("TPU v99")
