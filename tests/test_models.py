import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flip_jax.models import text as text_lib
from flip_jax.models import vit


def tiny_vit(**kw):
  args = dict(image_size=32, variant="custom/8", width=32, depth=2, heads=2, mlp_dim=64)
  args.update(kw)
  return vit.VisionTransformer(rngs=nnx.Rngs(0), **args)


def test_variants_by_name():
  assert vit.parse_variant("L/16") == ((1024, 24, 16, 4096), 16)
  assert vit.parse_variant("H/14") == ((1280, 32, 16, 5120), 14)
  assert vit.parse_variant("g/14") == ((1408, 40, 16, 6144), 14)
  with pytest.raises(ValueError, match="unknown ViT variant"):
    vit.parse_variant("XL/16")
  m = nnx.eval_shape(lambda: vit.VisionTransformer(image_size=224, variant="B/16",
                                                   rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert 85e6 < n < 87e6  # ViT-B/16 without a head: 85.8M


def test_dropped_patches_do_not_matter():
  m = tiny_vit()
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  keep = jnp.array([[0, 5, 7, 9, 12, 15], [1, 2, 3, 4, 10, 11]])
  out = m(jnp.asarray(x), keep_indices=keep)["pooled"]
  # change every patch that is not kept: the output must not move
  y = x.copy()
  patches = vit.patchify(jnp.asarray(y), 8)
  noise = np.random.default_rng(1).normal(size=patches.shape).astype(np.float32)
  keep_np = np.asarray(keep)
  for b in range(2):
    dropped = np.setdiff1d(np.arange(16), keep_np[b])
    p = np.asarray(patches).copy()
    p[b, dropped] = noise[b, dropped]
    img = p[b].reshape(4, 4, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(32, 32, 3)
    y[b] = img
  np.testing.assert_array_equal(np.asarray(vit.patchify(jnp.asarray(y), 8))[0, keep_np[0]],
                                np.asarray(patches)[0, keep_np[0]])
  out2 = m(jnp.asarray(y), keep_indices=keep)["pooled"]
  np.testing.assert_allclose(out, out2, rtol=0, atol=1e-6)
  # ...and the full (unmasked) output does move
  assert not np.allclose(m(jnp.asarray(x))["pooled"], m(jnp.asarray(y))["pooled"])


def test_keep_all_equals_unmasked():
  m = tiny_vit()
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  keep = jnp.broadcast_to(jnp.arange(16), (3, 16))
  np.testing.assert_allclose(m(x)["pooled"], m(x, keep_indices=keep)["pooled"], atol=1e-6)
  np.testing.assert_allclose(m(x)["tokens"], m(x, keep_indices=keep)["tokens"], atol=1e-6)


def test_mask_token_replacement():
  m = tiny_vit(mask_token=True)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  mask = jnp.zeros((2, 16), bool).at[:, :8].set(True)
  y = x.at[:, :16].set(0.0)  # rows 0-15 = the first 8 patches (2 patch rows)
  np.testing.assert_allclose(m(x, mask=mask)["tokens"], m(y, mask=mask)["tokens"], atol=1e-6)
  assert m(x, mask=mask)["tokens"].shape == (2, 17, 32)
  with pytest.raises(ValueError, match="mask_token"):
    tiny_vit()(x, mask=mask)


def test_sincos2d_and_pooling():
  pe = vit.sincos2d(4, 32)
  assert pe.shape == (16, 32)
  assert len({tuple(np.round(r, 5)) for r in pe}) == 16  # every position distinct
  m = tiny_vit(pool="cls")
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  out = m(x)
  np.testing.assert_allclose(out["pooled"], out["tokens"][:, 0])
  g = tiny_vit(pool="gap")(x)
  np.testing.assert_allclose(g["pooled"], g["tokens"].mean(1), atol=1e-6)
  assert tiny_vit(pool="map", pos_emb="learned", ln_pre=True, act="quick_gelu")(x)["pooled"].shape == (2, 32)


def test_drop_path_is_stochastic_only_with_rng():
  m = tiny_vit(drop_path=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  np.testing.assert_array_equal(m(x)["pooled"], m(x)["pooled"])
  a = m(x, rng=jax.random.key(1))["pooled"]
  b = m(x, rng=jax.random.key(2))["pooled"]
  assert not np.allclose(a, b)


def test_remat_same_values_and_grads():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  def loss(m):
    return (m(x)["pooled"] ** 2).sum()
  plain, full = tiny_vit(), tiny_vit(remat="full")
  g1 = nnx.grad(loss)(plain)
  g2 = nnx.grad(loss)(full)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def tiny_text(**kw):
  args = dict(vocab_size=50, max_len=8, width=32, depth=2, heads=2, mlp_dim=64)
  args.update(kw)
  return text_lib.TextTransformer(rngs=nnx.Rngs(0), **args)


def test_text_causal_and_pooling():
  tokens = jnp.array([[1, 5, 7, 49, 0, 0, 0, 0], [1, 3, 49, 0, 0, 0, 0, 0]])
  causal = tiny_text(causal=True, pool="last")
  out = causal(tokens)
  # EOS pooling = token at argmax id (49)
  np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, 3], atol=1e-6)
  # causal: changing a later token leaves earlier outputs unchanged
  t2 = tokens.at[0, 5].set(9)
  np.testing.assert_allclose(causal(t2)["tokens"][0, :5], out["tokens"][0, :5], atol=1e-6)
  # non-causal with padding mask: pad positions' ids do not change the first token
  bidir = tiny_text(causal=False, pool="first")
  a = bidir(tokens)["pooled"]
  np.testing.assert_allclose(a[0], bidir(tokens)["tokens"][0, 0])
  t3 = tokens.at[0, 2].set(8)  # a real token changes everything
  assert not np.allclose(bidir(t3)["pooled"][0], a[0])
  mean = tiny_text(pool="mean")(tokens)
  np.testing.assert_allclose(mean["pooled"][1], mean["tokens"][1, :3].mean(0), atol=1e-6)
