"""FLOPs and bytes of a step compiled for NVIDIA GPUs without one (flip_jax/gpu_targets.py).

`compiled.cost_analysis()` is not implemented for a deviceless CUDA executable. XLA's
generic HLO cost analysis of its optimized module runs through the CPU client; it counts
dots and GEMM fusions, elementwise work and bytes, but a cuDNN custom call as 0 FLOPs.
So the cuDNN flash attention calls are added from their operand shapes (queries
[B, T, H, D], keys [B, S, H, D]; the padded lengths cuDNN computes on):

- forward `__cudnn$fmhaSoftmax`: Q K^T and P V, 4 B H T S D;
- backward `__cudnn$fmhaSoftmaxBackward`: Q K^T again, dP = dO V^T, dV = P^T dO,
  dQ = dS K and dK = dS^T Q, 10 B H T S D.

Calls inside a loop count once per known trip count. Causal masking is counted as full
attention (cuDNN skips about half of those blocks).
"""
from __future__ import annotations

import re

import jax.extend
from jax._src.lib import xla_client  # XLA's generic HLO cost analysis: no public API

from flip_jax import hlo_stats

FMHA = {"__cudnn$fmhaSoftmax": 4, "__cudnn$fmhaSoftmaxBackward": 10}  # FLOPs / (B H T S D)
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_LAYOUTS = re.compile(r"operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}")


def cudnn_attention_calls(hlo: str) -> list[dict]:
  """One record per executed cuDNN attention call: target, flops, q and k dims."""
  found: list[dict] = []
  for _, opcode, rest, times in hlo_stats.executed(hlo)[1]:
    target = _TARGET.search(rest) if opcode == "custom-call" else None
    if target and target.group(1) in FMHA:
      (_, q), (_, k) = hlo_stats.array_shapes(_LAYOUTS.search(rest).group(1))[:2]
      b, t, h, d = q
      flops = FMHA[target.group(1)] * b * h * t * k[1] * d
      found.extend([dict(target=target.group(1), flops=flops, q=q, k=k)] * times)
  return found


def cost_analysis(compiled) -> dict:
  """{'flops', 'bytes accessed', 'cudnn_attention_flops', 'cudnn_attention_calls'} per
  device of a deviceless GPU executable (see the module doc)."""
  module = compiled.runtime_executable().hlo_modules()[0]
  generic = xla_client._xla.hlo_module_cost_analysis(  # noqa: SLF001 - no public API
      jax.extend.backend.get_backend("cpu"), module)
  calls = cudnn_attention_calls(compiled.as_text())
  attention = sum(c["flops"] for c in calls)
  return {"flops": max(generic.get("flops", 0.0), 0.0) + attention,
          "bytes accessed": generic["bytes accessed"], "cudnn_attention_flops": attention,
          "cudnn_attention_calls": len(calls)}

