import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flip_jax import objectives, sharding
from flip_jax.objectives import flip
from helpers import random_batch, tiny_flip_config


def numpy_infonce(zi, zt, scale):
  logits = scale * zi @ zt.T
  def ce(l):
    l = l - l.max(1, keepdims=True)
    logp = l - np.log(np.exp(l).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))
  return (ce(logits) + ce(logits.T)) / 2


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_infonce_matches_numpy_and_uniform():
  rng = np.random.default_rng(0)
  zi, zt = unit(rng.normal(size=(16, 8))), unit(rng.normal(size=(16, 8)))
  loss, m = flip.infonce_global(jnp.asarray(zi), jnp.asarray(zt), 10.0)
  np.testing.assert_allclose(loss, numpy_infonce(zi, zt, 10.0), rtol=1e-5)
  # identical embeddings for everyone -> uniform logits -> ln(B)
  same = np.tile(unit(rng.normal(size=(1, 8))), (16, 1))
  loss_u, _ = flip.infonce_global(jnp.asarray(same), jnp.asarray(same), 14.0)
  np.testing.assert_allclose(loss_u, np.log(16), rtol=1e-6)
  # perfect alignment -> top-1 = 1
  _, m = flip.infonce_global(jnp.asarray(zi), jnp.asarray(zi), 100.0)
  assert float(m["i2t_top1"]) == 1.0 and float(m["t2i_top1"]) == 1.0


@pytest.fixture(scope="module")
def mesh42():
  return sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})


def test_local_equals_global_features(mesh42):
  rng = np.random.default_rng(1)
  zi, zt = unit(rng.normal(size=(32, 16))), unit(rng.normal(size=(32, 16)))
  shard = jax.NamedSharding(mesh42, sharding.batch_spec(2))
  zi_s, zt_s = jax.device_put(zi, shard), jax.device_put(zt, shard)

  def f(impl):
    def loss(a, b, s):
      return flip.LOSSES[impl](a, b, s)[0]
    with jax.set_mesh(mesh42):
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(zi_s, zt_s, 12.0)

  (lg, gg), (ll, gl) = f("global"), f("local")
  np.testing.assert_allclose(ll, lg, rtol=1e-6)
  np.testing.assert_allclose(lg, numpy_infonce(zi, zt, 12.0), rtol=1e-5)
  for a, b in zip(gg, gl):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_local_equals_global_whole_model(mesh42):
  """Loss and every parameter gradient of the full FLIP model, both loss implementations."""
  grads = {}
  for impl in ("global", "local"):
    c = tiny_flip_config(loss_impl=impl)
    obj = objectives.get(c)
    model = obj.build(nnx.Rngs(0))
    g, params, rest = nnx.split(model, nnx.Param, ...)
    batch = random_batch(c)
    with jax.set_mesh(mesh42):
      b = {k: jax.device_put(v, jax.NamedSharding(mesh42, sharding.batch_spec(v.ndim)))
           for k, v in batch.items()}
      def loss(p):
        return obj.loss(nnx.merge(g, p, rest), b, jax.random.key(3), 0)[0]
      grads[impl] = jax.jit(jax.value_and_grad(loss))(nnx.to_pure_dict(params))
  np.testing.assert_allclose(grads["local"][0], grads["global"][0], rtol=1e-6)
  # f32 sums in another order: equal to 1e-6 of each gradient's scale (1e-7 absolute floor)
  for a, b in zip(jax.tree.leaves(grads["global"][1]), jax.tree.leaves(grads["local"][1])):
    np.testing.assert_allclose(a, b, rtol=0, atol=max(1e-6 * float(np.abs(a).max()), 1e-7))


def test_flip_metrics_and_unmasked_eval():
  c = tiny_flip_config(mask_ratio=0.75)
  obj = objectives.get(c)
  model = obj.build(nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in random_batch(c).items()}
  loss, m = obj.loss(model, batch, jax.random.key(0), 0)
  assert float(m["tokens_kept"]) == 4  # int(16 * 0.25)
  np.testing.assert_allclose(m["logit_scale"], 1 / 0.07, rtol=1e-5)
  assert np.isfinite(float(loss))
  # eval features are the model at mask ratio 0 (no keep indices) ...
  c0 = tiny_flip_config(mask_ratio=0.0)
  obj0 = objectives.get(c0)
  feats = obj.image_features(model, batch["image"])
  zi = model.encode_image(batch["image"])
  np.testing.assert_allclose(feats, zi, atol=1e-6)
  # ... and a mask-0 objective's loss uses exactly those features
  zt = model.encode_text(batch["text"])
  ref = numpy_infonce(np.asarray(zi), np.asarray(zt), float(model.scale()))
  np.testing.assert_allclose(obj0.loss(model, batch, jax.random.key(0), 0)[0], ref, rtol=1e-5)


def test_logit_scale_clipped():
  c = tiny_flip_config()
  model = objectives.get(c).build(nnx.Rngs(0))
  model.logit_scale[...] = jnp.asarray(9.0)
  np.testing.assert_allclose(model.scale(), 100.0, rtol=1e-6)
  model.logit_scale[...] = jnp.asarray(-3.0)
  np.testing.assert_allclose(model.scale(), 1.0, rtol=1e-6)


def test_validation_loss_evaluator_is_deterministic_and_fixed_masked():
  from flip_jax import evaluate, sharding, train
  c = tiny_flip_config()
  c.evals = {"val": dict(type="val_loss", dataset="digits", split="test", batch_size=32)}
  mesh = sharding.make_mesh({"data": -1})
  with tempfile.TemporaryDirectory() as workdir:
    _, c = train.resolve_tokenizer(c, workdir)  # sizes the text tower to the digits vocab
    trainer = train.Trainer(c, mesh)
    with jax.set_mesh(mesh):
      state = trainer.init()
    (ev,) = evaluate.build(c, workdir)
    assert len(ev.batches) == 360 // 32  # digits test split, remainder dropped
    assert not isinstance(ev.batches, list)  # streamed: decoded anew on every run
    a = ev.run(trainer.features(state))
    b = ev.run(trainer.features(state))
  assert a == b
  assert a["tokens_kept"] == 8  # 16 patches at mask 0.5
  # an untrained model: about ln(32) for a batch of 32
  np.testing.assert_allclose(a["loss"], np.log(32), atol=0.3)
