import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flip_jax import objectives, optim, trees
from helpers import tiny_flip_config


def flip_params(c):
  model = objectives.get(c).build(nnx.Rngs(0))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_weight_decay_mask_hits_intended_leaves():
  c = tiny_flip_config()
  c.model.image.pos_emb = "learned"
  params = flip_params(c)
  mask = optim.decay_mask(c, params)
  names = jax.tree.leaves(trees.names(params))
  decayed = {n for n, d in zip(names, jax.tree.leaves(mask)) if d}
  for n in names:
    no_decay = (n.endswith("/bias") or n.endswith("/scale") or "pos_emb" in n
                or "cls_token" in n or n == "logit_scale")
    assert (n in decayed) == (not no_decay), n
  assert "image/encoder/blocks/0/attn/q/kernel" in decayed
  assert "text/token_emb" in decayed and "image_proj/kernel" in decayed


def test_schedule_in_samples():
  c = tiny_flip_config()
  c.batch_size = 512
  c.total_samples = 512 * 100
  c.optim.update(lr_per_256=1e-3, warmup_samples=512 * 10, schedule="cosine", end_lr_ratio=0.0)
  lr = optim.schedule(c)
  peak = 2e-3
  np.testing.assert_allclose(lr(0), 0.0)
  np.testing.assert_allclose(lr(5), peak * 0.5, rtol=1e-6)  # half-way through warmup
  np.testing.assert_allclose(lr(10), peak, rtol=1e-6)
  np.testing.assert_allclose(lr(55), peak * 0.5, rtol=1e-5)  # half-way through the cosine
  np.testing.assert_allclose(lr(100), 0.0, atol=1e-9)
  c.optim.update(schedule="step", step_at=(0.875,), warmup_samples=0)
  lr = optim.schedule(c)
  np.testing.assert_allclose(lr(87), peak, rtol=1e-6)
  np.testing.assert_allclose(lr(88), peak * 0.1, rtol=1e-6)  # 88 % of 100 >= 7/8
  # the FLIP L/16 recipe: 4e-6 per 256 at batch 64k -> 1.024e-3
  c.batch_size, c.optim.lr_per_256 = 65536, 4e-6
  np.testing.assert_allclose(optim.peak_lr(c), 1.024e-3)


def test_freeze_and_lr_multipliers():
  c = tiny_flip_config()
  c.optim.update(freeze=(r"^text/",), lr_mults=((r"^image_proj", 0.0), (r"^image/", 0.5)),
                 warmup_samples=0, schedule="constant", weight_decay=0.0)
  params = flip_params(c)
  labels = jax.tree.leaves(optim.group_labels(c, params))
  assert {"frozen", "lr_x0.5", "lr_x0.0", "default"} == set(labels)
  tx = optim.make(c, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, tx.init(params), params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["text"]))
  assert float(jnp.abs(updates["image_proj"]["kernel"]).max()) == 0
  lr = optim.peak_lr(c)
  # Adam's first step is -lr * sign(g): multiplier 0.5 halves it
  np.testing.assert_allclose(updates["image"]["patch_embed"]["kernel"], -0.5 * lr, rtol=1e-4)
  np.testing.assert_allclose(updates["logit_scale"], -lr, rtol=1e-4)
  # frozen params keep no Adam moments
  n_moment = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size"))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_text = sum(x.size for x in jax.tree.leaves(params["text"]))
  assert n_moment < 2 * (n_params - n_text) + 100


def test_grad_clip():
  c = tiny_flip_config()
  c.optim.update(grad_clip=1.0)
  params = {"w": jnp.ones((3,))}
  tx = optim.make(c, params)
  assert isinstance(tx, optax.GradientTransformation)
  g = {"w": jnp.full((3,), 10.0)}
  clipped, _ = optax.clip_by_global_norm(1.0).update(g, None)
  np.testing.assert_allclose(optax.tree.norm(clipped), 1.0, rtol=1e-6)
