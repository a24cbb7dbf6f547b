"""Which implementation computes attention, and the call into it.

`attn_impl` (config.model.image / model.text) is 'xla', 'cudnn' or 'auto'. 'auto' picks
cuDNN flash attention (`jax.nn.dot_product_attention(implementation='cudnn')`) when the
program is compiled for an NVIDIA GPU and cuDNN's constraints hold, and XLA's attention
otherwise; on a GPU it logs why it fell back (once per reason). The constraints, as jax
0.10's cuDNN path checks them:

- a CUDA build of jax (cuDNN present) and a GPU of compute capability >= 8.0;
- bfloat16 or float16 inputs (float32 is XLA's);
- a head dim that is a multiple of 8 and <= 128 (<= 256 on Hopper, when jax runs on it:
  a deviceless compile checks against 128);
- even sequence lengths for training. jax 0.10.2 passes cuDNN an empty placeholder for a
  missing bias and then checks `bias is not None`, so it rejects every odd length (FLIP's
  99 tokens at mask 0.5, 197 unmasked), mask or none. `attend` therefore pads odd query
  and key lengths by one and hands cuDNN the true lengths (its padding mask: the extra
  key gets no weight, the extra query row is dropped): exact, and every ViT sequence
  runs on cuDNN. A dense boolean mask (cuDNN adds it as a bias) is not padded: with odd
  lengths it stays on XLA. Text padding goes as `KeyPadding` (lengths, no bias) and
  causality as `is_causal`.

The target is read at trace time (models/target.py). On CPU, XLA's attention is
`heads_major`: the same maths as jax's 'xla' implementation with the heads moved ahead of
the tokens before the two batched matmuls, which XLA:CPU runs ~30% faster (see there). On
every CPU mesh, not only one device, so that one CPU device and eight compute the same
bits (the rounding differs from jax's by ~1e-7).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from absl import logging

from flip_jax import gpu_targets
from flip_jax.models.target import target_device

IMPLS = ("auto", "xla", "cudnn")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KeyPadding:
  """Keys that are padding, given as `valid` [B, S] bool with the valid keys first in each
  row (tokenizers pad at the end). XLA masks them; cuDNN takes the lengths."""
  valid: jax.Array

  def dense(self) -> jax.Array:
    return self.valid[:, None, None, :]

  def lengths(self) -> jax.Array:
    return self.valid.sum(-1).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def compute_capability(device_kind: str) -> tuple[int, int] | None:
  """Of a visible GPU of this kind, else of a GPU flip_jax.gpu_targets describes."""
  for d in jax.devices():
    if d.device_kind == device_kind and hasattr(d, "compute_capability"):
      return tuple(int(x) for x in d.compute_capability.split("."))[:2]
  for gpu in gpu_targets.GPUS.values():
    if gpu.name == device_kind:
      return gpu.compute_capability
  return None


def _cudnn_present() -> bool:
  from jax._src.lib import cuda_versions  # what jax's cuDNN path itself checks
  return cuda_versions is not None


def choose(impl: str, q, k, mask=None, *, device: tuple[str, str] | None = None
           ) -> tuple[str, str]:
  """('xla' | 'cudnn', why): `impl` resolved for queries q [B, T, H, D], keys k [B, S, H, D]
  and `mask` (None, KeyPadding or a dense boolean array) on `device` (platform, kind)."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl, "as configured"
  platform, kind = device or target_device()
  if platform != "gpu":
    return "xla", f"not a GPU ({platform})"
  if not _cudnn_present():
    return "xla", "no cuDNN in this jax build (not CUDA)"
  cc = compute_capability(kind)
  if cc is None or cc < (8, 0):
    return "xla", f"{kind}: compute capability {cc or 'unknown'}, cuDNN flash needs >= 8.0"
  if q.dtype not in CUDNN_DTYPES:
    return "xla", f"dtype {q.dtype.name}: cuDNN flash attention needs bfloat16 or float16"
  head_dim = q.shape[-1]
  max_head_dim = 256 if cc >= (9, 0) and jax.default_backend() == "gpu" else 128
  if head_dim % 8 or head_dim > max_head_dim:
    return "xla", f"head dim {head_dim}: cuDNN needs a multiple of 8 <= {max_head_dim}"
  t, s = q.shape[1], k.shape[1]
  if mask is not None and not isinstance(mask, KeyPadding) and (t % 2 or s % 2):
    return "xla", f"a dense mask with odd lengths (queries {t}, keys {s}): cuDNN needs even"
  return "cudnn", "constraints hold"


@functools.lru_cache(maxsize=None)
def _log_fallback(why: str) -> None:
  logging.info("attention: XLA instead of cuDNN flash attention: %s", why)


@jax.named_scope("attention_core")  # the step profile's 'attention' (flip_jax/step_profile.py)
def attend(impl: str, q, k, v, *, mask=None, causal: bool = False):
  """jax.nn.dot_product_attention with `impl` resolved by `choose`; mask: None,
  KeyPadding or a boolean array broadcastable to [B, H, T, S]."""
  chosen, why = choose(impl, q, k, mask)
  if impl == "auto" and chosen == "xla" and not why.startswith("not a GPU"):
    _log_fallback(why)
  if chosen == "cudnn" and (mask is None or isinstance(mask, KeyPadding)):
    return padded_to_even(q, k, v, mask, causal, "cudnn")
  if isinstance(mask, KeyPadding):
    mask = mask.dense()
  if chosen == "xla" and target_device()[0] == "cpu":
    return heads_major(q, k, v, mask=mask, causal=causal)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation=chosen)


def heads_major(q, k, v, *, mask=None, causal: bool = False):
  """jax.nn.dot_product_attention(implementation='xla') for q [B, T, N, H], k, v [B, S, N, H]
  and a boolean `mask` broadcastable to [B, N, T, S], computed with q, k and v transposed
  to [B, N, T, H] first.

  jax's version contracts q and k in their [B, T, N, H] layout (through a grouped 5-D
  einsum), and XLA:CPU then copies the [B, N, T, S] logits and their gradients between
  layouts around each batched matmul. Moving the heads ahead of the tokens copies q, k, v
  and the output instead (S/H times less data at ViT-B/16's 197 tokens): attention's
  forward and backward took 80 instead of 111 ms a layer there (flip_b16, batch 8, two
  threads). The logits and softmax stay in float32 and masked logits get jax's large
  negative value, so the result is the same to rounding; q is scaled before the product
  (jax scales the logits)."""
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  qh = qh * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("bnth,bnsh->bnts", qh, kh, preferred_element_type=logits_dtype)
  keep = mask
  if causal:
    tril = jnp.tril(jnp.ones(logits.shape[-2:], bool))  # jax's causal mask
    keep = tril if keep is None else jnp.logical_and(keep, tril)
  if keep is not None:
    large_negative = -0.7 * jnp.finfo(jnp.float32).max
    logits = jnp.where(keep, logits, jnp.asarray(large_negative, logits.dtype))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bnts,bnsh->bnth", probs, vh), 1, 2)


def padded_to_even(q, k, v, padding: KeyPadding | None, causal: bool, impl: str):
  """Attention with odd query/key lengths padded by one, the true lengths passed as
  sequence lengths (see the module doc); the output has q's length."""
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  kv_lengths = padding.lengths() if padding is not None else None
  if t % 2 == 0 and s % 2 == 0:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                        key_value_seq_lengths=kv_lengths, implementation=impl)
  def pad(x):
    return jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  q_lengths = jnp.full((b,), t, jnp.int32)
  kv_lengths = kv_lengths if kv_lengths is not None else jnp.full((b,), s, jnp.int32)
  y = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), is_causal=causal,
                                   query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths,
                                   implementation=impl)
  return y[:, :t]
