"""The CPU-only graph rewrites (models/materialize.py and models/dense_matmul.py on one
device, attention.heads_major on any CPU mesh) change how XLA:CPU runs a step, not what it
computes: FLIP's loss and gradients on one CPU device equal those of the plain graph (each
Dense one dot_general, the residual stream left to XLA, jax's own attention) within 1e-6."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_jax import sharding
from flip_jax.models import attention, dense_matmul, materialize, target
from helpers import assert_grads_close, loss_and_grads, tiny_flip_config


def reference_matmul(x, kernel, n_in):
  """What Dense computed before the rewrite: one dot_general, jax's own gradient."""
  axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
  return jax.lax.dot_general(x, kernel, (axes, ((), ())))


def reference_attention(q, k, v, *, mask=None, causal=False):
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation="xla")


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_rewritten_step_equals_plain_graph(monkeypatch, mask_ratio):
  c = tiny_flip_config(mask_ratio=mask_ratio)
  c.model.image.update(depth=3, drop_path=0.1)
  one_cpu = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
  loss, grads, _, hlo = loss_and_grads(c, one_cpu)
  monkeypatch.setattr(dense_matmul, "matmul", reference_matmul)
  monkeypatch.setattr(materialize, "materialize", lambda x: x)
  monkeypatch.setattr(attention, "heads_major", reference_attention)
  loss_ref, grads_ref, _, hlo_ref = loss_and_grads(c, one_cpu)
  # the rewrites were in the first graph: their copy loops (the RNG has loops of its own)
  assert hlo.count(" while(") > hlo_ref.count(" while(")
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6, atol=1e-6)
  assert_grads_close(grads, grads_ref)


def test_rewrites_only_on_one_cpu_device():
  x = jnp.arange(24.0).reshape(4, 6)
  k = jnp.ones((6, 3))
  with jax.set_mesh(sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})):
    assert not target.on_one_cpu()
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: dense_matmul.matmul(x, k, 1).sum()))(k))
    assert "custom_vjp" not in jaxpr and "while" not in jaxpr
    assert materialize.materialize(x) is x
  assert target.on_one_cpu()


def test_heads_major_attention_on_every_cpu_mesh_only(monkeypatch):
  """On CPU, one device or several (so that both compute the same bits); elsewhere jax's."""
  calls = []
  monkeypatch.setattr(attention, "heads_major", lambda *a, **k: calls.append(1))
  q = jnp.ones((2, 5, 2, 4))
  attention.attend("xla", q, q, q)
  with jax.set_mesh(sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})):
    jax.make_jaxpr(lambda q: attention.attend("xla", q, q, q))(q)
  assert len(calls) == 2
  monkeypatch.setattr(attention, "target_device", lambda: ("tpu", "TPU v3"))
  jax.make_jaxpr(lambda q: attention.attend("xla", q, q, q))(q)
  assert len(calls) == 2


@pytest.mark.parametrize("shape", [(1, 3), (2, 3), (6, 5), (7, 2)])
def test_copy_through_loop_is_exact(shape):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  np.testing.assert_array_equal(jax.jit(materialize.copy_through_loop)(x), x)
  np.testing.assert_array_equal(
      jax.jit(jax.grad(lambda x: (materialize.materialize(x) * x).sum()))(x), 2 * x)


@pytest.mark.parametrize("masking", ["none", "dense", "causal", "padding+causal"])
def test_heads_major_attention_equals_jax(masking):
  rng = np.random.default_rng(0)
  q, k, v, g = (jnp.asarray(rng.normal(size=(3, 7, 2, 8)), jnp.float32) for _ in range(4))
  mask, causal = None, masking.endswith("causal")
  if masking == "dense":
    mask = jnp.asarray(rng.random((3, 2, 7, 7)) < 0.7).at[..., 0].set(True)
  if masking.startswith("padding"):
    mask = attention.KeyPadding(jnp.arange(7)[None] < jnp.array([[7], [4], [1]])).dense()

  def vjp(f):
    out, back = jax.vjp(lambda q, k, v: f(q, k, v, mask=mask, causal=causal), q, k, v)
    return (out, *back(g))
  got = jax.jit(lambda: vjp(attention.heads_major))()
  want = jax.jit(lambda: vjp(reference_attention))()
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
