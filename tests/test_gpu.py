"""The GPU path without a GPU: cuDNN attention chosen and compiled for H100s by the CUDA
plugin on this CPU (the `gpu-plan` extra), GPU topologies in the planner, bf16 compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_jax import config_check, gpu_cost, gpu_targets, hardware, hlo_stats, plan, plan_batch
from flip_jax.models import attention
from flip_jax.models.layers import Attention
from helpers import load_config, tiny_flip_config

H100 = ("gpu", "NVIDIA H100 80GB HBM3")
A100 = ("gpu", "NVIDIA A100-SXM4-80GB")


# ------------------------------------------------------------------ targets

@pytest.mark.parametrize("key", sorted(gpu_targets.GPUS))
def test_target_figures_agree_with_the_hardware_table(key):
  gpu = gpu_targets.GPUS[key]
  spec = hardware.spec_for(gpu.name)
  # The tensor-core rates of the description give the datasheet's dense bf16 peak.
  assert gpu_targets.peak_bf16(gpu) == pytest.approx(spec.peak_bf16, rel=2e-3)
  assert spec.hbm_bw == gpu.memory_bandwidth
  assert spec.hbm_bytes == hardware.GPU_MEMORY_FRACTION * gpu.memory_bytes
  text = gpu_targets.target_config(gpu)
  assert f'name: "{gpu.name}"' in text and f"core_count: {gpu.sm_count}" in text
  assert "collective_memory_granularity" not in text  # jax 0.10.2's proto lacks it


def test_gpu_topologies_are_compile_only_devices():
  devices = gpu_targets.topology_devices("h100:8")
  assert len(devices) == 8 and {d.platform for d in devices} == {"gpu"}
  assert {d.device_kind for d in devices} == {"NVIDIA H100 80GB HBM3"}
  two_hosts = plan.topology_devices("a100:2x8")
  assert len(two_hosts) == 16 and {d.process_index for d in two_hosts} == {0, 1}
  assert two_hosts[0].device_kind == "NVIDIA A100-SXM4-80GB"
  # Between hosts the roofline uses the network, within one NVLink.
  spec = hardware.spec_for("A100")
  assert gpu_targets.cluster_spec(spec, "a100:8") is spec
  assert gpu_targets.cluster_spec(spec, "a100:2x8").ici_bw == 25e9


def test_launch_script_gives_xla_the_memory_share_the_planner_assumes():
  import os
  import re
  from helpers import ROOT
  script = open(os.path.join(ROOT, "launch", "gpu.sh")).read()
  share = re.search(r"XLA_PYTHON_CLIENT_MEM_FRACTION:-([\d.]+)", script).group(1)
  assert float(share) == hardware.GPU_MEMORY_FRACTION


@pytest.mark.parametrize("name, match", [
    ("h100:16", "at most 8 GPUs per host"), ("h100:0", "unknown GPU topology"),
    ("a100:2x2x8", "unknown GPU topology")])
def test_bad_gpu_topology_is_named(name, match):
  with pytest.raises(ValueError, match=match) as err:
    plan.topology_devices(name)
  assert "\n" not in str(err.value)


# ------------------------------------------------------------------ attention choice

def _qk(t=99, s=None, d=64, dtype=jnp.bfloat16):
  return (jax.ShapeDtypeStruct((2, t, 4, d), dtype),
          jax.ShapeDtypeStruct((2, s or t, 4, d), dtype))


def test_auto_picks_cudnn_on_an_nvidia_gpu_when_constraints_hold():
  q, k = _qk()
  assert attention.choose("auto", q, k, device=H100) == ("cudnn", "constraints hold")
  padding = attention.KeyPadding(jnp.ones((2, 99), bool))  # text padding: lengths, no bias
  assert attention.choose("auto", q, k, padding, device=A100)[0] == "cudnn"
  assert attention.choose("auto", *_qk(t=1, s=50), device=H100)[0] == "cudnn"  # pooling


@pytest.mark.parametrize("qk, mask, device, why", [
    (_qk(), None, ("tpu", "TPU v4"), "not a GPU (tpu)"),
    (_qk(), None, ("cpu", "cpu"), "not a GPU (cpu)"),
    (_qk(dtype=jnp.float32), None, H100, "dtype float32: cuDNN flash attention needs "
     "bfloat16 or float16"),
    (_qk(d=12), None, H100, "head dim 12: cuDNN needs a multiple of 8 <= 128"),
    (_qk(d=136), None, A100, "head dim 136: cuDNN needs a multiple of 8 <= 128"),
    (_qk(t=99), jnp.ones((2, 1, 99, 99), bool), H100,
     "a dense mask with odd lengths (queries 99, keys 99): cuDNN needs even"),
    (_qk(), None, ("gpu", "Tesla V100-SXM2-16GB"),
     "Tesla V100-SXM2-16GB: compute capability unknown, cuDNN flash needs >= 8.0"),
])
def test_auto_falls_back_to_xla_and_says_why(qk, mask, device, why):
  assert attention.choose("auto", *qk, mask, device=device) == ("xla", why)


def test_explicit_choices_and_bad_names():
  q, k = _qk(dtype=jnp.float32)
  assert attention.choose("cudnn", q, k, device=("cpu", "cpu")) == ("cudnn", "as configured")
  assert attention.choose("xla", q, k, device=H100) == ("xla", "as configured")
  with pytest.raises(ValueError, match="one of .*'flash'"):
    Attention(8, 2, rngs=__import__("flax").nnx.Rngs(0), impl="flash")
  c = tiny_flip_config()
  c.model.text.attn_impl = "flash"
  with pytest.raises(config_check.ConfigError, match=r"config.model.text.attn_impl: 'flash'"):
    config_check.validate(c, 1)


@pytest.mark.parametrize("t, s", [(9, 9), (1, 7), (8, 8)])
def test_odd_lengths_padded_to_even_are_exact(t, s):
  """What `attend` hands cuDNN (one padded position, true lengths), computed by XLA here,
  equals plain attention; with text padding too."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, n, 2, 8)), jnp.float32) for n in (t, s, s))
  valid = jnp.asarray(np.arange(s)[None, :] < np.array([[s], [max(1, s - 3)]]))
  want = jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :])
  got = attention.padded_to_even(q, k, v, attention.KeyPadding(valid), False, "xla")
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(attention.padded_to_even(q, k, v, None, False, "xla"),
                             jax.nn.dot_product_attention(q, k, v), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ HLO readers

GPU_HLO = """HloModule jit_step

%body (p: (s32[], bf16[4,10,2,16])) -> (s32[], bf16[4,10,2,16]) {
  %p = (s32[], bf16[4,10,2,16]{3,2,1,0}) parameter(0)
  %f = (bf16[4,2,10,16]{3,1,2,0}, f32[4,2,10]{2,1,0}, u8[0]{0}) custom-call(%q, %k, %v, %l, %l), custom_call_target="__cudnn$fmhaSoftmax", operand_layout_constraints={bf16[4,10,2,16]{3,2,1,0}, bf16[4,10,2,16]{3,2,1,0}, bf16[4,10,2,16]{3,2,1,0}, s32[4]{0}, s32[4]{0}}, api_version=API_VERSION_STATUS_RETURNING
  ROOT %t = (s32[], bf16[4,10,2,16]{3,2,1,0}) tuple(%i, %x)
}

%yes (a: f32[8]) -> f32[8] {
  %b = (bf16[4,2,1,16]{3,1,2,0}, bf16[4,2,6,16]{3,1,2,0}, bf16[4,2,6,16]{3,1,2,0}, u8[0]{0}) custom-call(%q, %k, %v, %o, %do, %s), custom_call_target="__cudnn$fmhaSoftmaxBackward", operand_layout_constraints={bf16[4,1,2,16]{3,2,1,0}, bf16[4,6,2,16]{3,2,1,0}, bf16[4,6,2,16]{3,2,1,0}, f32[4,2,1]{2,1,0}}, api_version=API_VERSION_STATUS_RETURNING
  ROOT %cp = f32[8]{0} collective-permute(%a), channel_id=5, source_target_pairs={{0,1},{1,0}}
}

%no (a: f32[8]) -> f32[8] {
  ROOT %a = f32[8]{0} parameter(0)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %w = (s32[], bf16[4,10,2,16]{3,2,1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %c = f32[8]{0} conditional(%pred, %x, %x), true_computation=%yes, false_computation=%no
  %ags = ((f32[1]{0}, bf16[2,3]{1,0}), (f32[8]{0}, bf16[16,3]{1,0})) all-gather-start(%a, %b), channel_id=6, replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %agd = (f32[8]{0}, bf16[16,3]{1,0}) all-gather-done(%ags)
}
"""


def test_gpu_hlo_cudnn_calls_and_collectives_exact():
  calls = gpu_cost.cudnn_attention_calls(GPU_HLO)
  assert [(c["target"], c["flops"]) for c in calls] == [
      *[("__cudnn$fmhaSoftmax", 4 * 4 * 2 * 10 * 10 * 16)] * 3,  # 3 loop trips
      ("__cudnn$fmhaSoftmaxBackward", 10 * 4 * 2 * 1 * 6 * 16)]  # a conditional's branch
  got = [(r["kind"], r["bytes"], r["dims"]) for r in hlo_stats.collectives(GPU_HLO, 8)]
  assert got == [("collective-permute", 32, [(8,)]),
                 ("all-gather", 8 * 4 + 16 * 3 * 2, [(8,), (16, 3)])]  # combined: results


# ------------------------------------------------------------------ the compiled step

@pytest.fixture(scope="module")
def h100_plan():
  """flip_debug (mask 0.5: 8 + 1 image tokens, 16 text tokens) compiled for one H100 host
  with FSDP over all 8 GPUs."""
  c = load_config("flip_debug")
  c.mesh.update(data=-1, fsdp=8)
  c.fsdp_min_size = 0
  return plan.plan(c, "h100:8")


def test_h100_step_uses_cudnn_attention_and_fsdp_collectives(h100_plan):
  row = h100_plan
  assert row["device_kind"] == "NVIDIA H100 80GB HBM3" and row["devices"] == 8
  assert row["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and row["dtype"] == "bfloat16"
  assert row["fits"] and row["hbm_capacity"] == hardware.spec_for("H100").hbm_bytes
  # Every attention (3 image + 2 text blocks) forward and backward is a cuDNN call.
  assert row["attention"] == "cudnn" and row["cudnn_attention_calls"] == 2 * (3 + 2)
  b, h, d = 16, 4, 16  # per-device batch, heads, head dim
  image = 4 * b * h * 10 * 10 * d  # 9 tokens run padded to 10
  text = 4 * b * h * 16 * 16 * d
  assert row["cudnn_attention_flops_per_device"] == 3 * 3.5 * image + 2 * 3.5 * text
  assert row["flops_per_device"] > row["cudnn_attention_flops_per_device"]
  # FSDP: weights gathered, gradients reduce-scattered; the loss gathers the batch.
  assert row["weight_collectives"]["all-gather"]["count"] >= 1
  assert row["weight_collectives"]["reduce-scatter"]["count"] >= 1
  assert row["collectives"]["all-gather"]["bytes"] > row["weight_collectives"]["all-gather"][
      "bytes"]
  spec = hardware.spec_for("H100")
  assert row["compute_s"] == pytest.approx(row["flops_per_device"] / spec.peak_bf16)
  assert row["memory_s"] == pytest.approx(row["bytes_accessed_per_device"] / spec.hbm_bw)
  assert row["collective_s"] == pytest.approx(row["collective_traffic_per_device"] / 450e9)


# ------------------------------------------------------------------ mixed precision

def test_bf16_compute_keeps_the_debug_loss_close_to_f32():
  """f32 master params either way; bf16 matmuls and activations move the FLIP loss of
  the tiny model by less than 0.5% (0.013% here; softmax, LayerNorm, loss and logit scale are f32)."""
  from flax import nnx
  from flip_jax import objectives
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
           "text": jnp.asarray(rng.integers(1, 64, size=(16, 8)), jnp.int32)}
  losses = {}
  for dtype in ("float32", "bfloat16"):
    objective = objectives.get(tiny_flip_config(dtype=dtype))
    model = objective.build(nnx.Rngs(0))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
    losses[dtype], _ = nnx.jit(objective.validation_loss)(model, batch)
  assert losses["bfloat16"].dtype == jnp.float32
  assert abs(float(losses["bfloat16"]) - float(losses["float32"])) < 0.005 * float(
      losses["float32"])


# ------------------------------------------------------------------ max batch

def _memory_model(base, per_sample, capacity, seen):
  """A plan whose bytes grow linearly with the batch, refused above `capacity`."""
  def plan_fn(c, topology, devices):
    per_device = c.batch_size // 4
    seen.append(per_device)
    need = base + per_sample * per_device
    return dict(fits=need <= capacity, hbm_bytes_per_device=need, hbm_capacity=capacity,
                per_device_batch=per_device)
  return plan_fn


@pytest.mark.parametrize("start, base, per_sample, want", [
    (32, 2e9, 0.1e9, 296),   # (32e9 - 2e9) / 0.1e9 = 300 -> 296 on the grid of 8
    (512, 20e9, 0.5e9, 24),  # the config's batch is far too big
    (8, 1e9, 0.1e9, 304)])   # far too small: doubles, then extrapolates (at most 4x)
def test_max_batch_finds_the_largest_multiple_of_8_in_few_compiles(start, base, per_sample,
                                                                   want):
  c = load_config("flip_debug")
  c.batch_size = start * 4
  seen = []
  found = plan_batch.max_batch(c, "v4:2x2x1", [None] * 4, report=lambda row: None,
                               plan_fn=_memory_model(base, per_sample, 32e9, seen),
                               max_compiles=12)
  assert found["max_per_device_batch"] == want and found["max_global_batch"] == 4 * want
  assert found["exact"] and found["bracket"] == [want, want + 8]
  assert found["row"]["per_device_batch"] == want and seen[0] == start
  assert found["compiles"] == len(seen) <= 6, seen


def test_max_batch_when_nothing_fits():
  c = load_config("flip_debug")
  found = plan_batch.max_batch(c, "v4:2x2x1", [None] * 4, report=lambda row: None,
                               plan_fn=_memory_model(40e9, 1e9, 32e9, []))
  assert found["max_per_device_batch"] == 0 and found["row"] is None and found["exact"]


def test_next_probe_from_one_refused_plan_subtracts_the_train_state():
  """flip_l16 on h100:8 at mask 0.5: 1024 per GPU needs 94.9 GB of 80.7 GB (0.62 GB of
  train state): the line through the state and that plan meets the capacity at 869."""
  assert plan_batch.next_probe([], [(1024, 94.93e9)], 80.70e9, 8, fixed=0.62e9) == 864
  # Kept off the bracket's outer eighths: progress even when the line says "just below".
  assert plan_batch.next_probe([(512, 60e9)], [(1024, 80.8e9)], 80.7e9, 8) == 960
  assert plan_batch.next_probe([(512, 60e9)], [], 80.7e9, 8) == 1024  # no line yet: double
