"""ExtreMA: one teacher forward for K masks, the EMA update, no gradient into the teacher,
the loss against NumPy, class attention and heads against NumPy, config errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flip_jax import config_check, objectives, optim, sharding, train, trees
from flip_jax.models import heads, vit
from flip_jax.objectives import ema, extrema
from helpers import load_config


def tiny_config(**overrides):
  """extrema_debug shrunk, with the paper's BYOL loss and 75% x 4 masks."""
  c = load_config("extrema_debug")
  c.model.image.update(width=32, depth=2, heads=2, mlp_dim=64)
  c.mask_ratio = 0.75
  c.extrema.update(num_masks=4, proj_hidden=48, proj_dim=16, pred_hidden=40, loss="byol")
  c.batch_size = 8
  c.total_samples = 8 * 10
  c.dtype = "float32"
  c.optim.warmup_samples = 0
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


def two_view_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.image_size, config.image_size, 3)
  return {"image": rng.normal(size=shape).astype(np.float32),
          "image2": rng.normal(size=shape).astype(np.float32)}


def one_device_trainer(config):
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  return train.Trainer(config, mesh), mesh


def test_k_masks_share_one_teacher_forward(monkeypatch):
  """Tracing the train step calls the ViT twice: the student on B x K masked copies and
  the EMA teacher once on the B unmasked second views."""
  c = tiny_config()
  trainer, mesh = one_device_trainer(c)
  calls = []
  original = vit.VisionTransformer.__call__

  def spy(self, images, **kw):
    keep = kw.get("keep_indices")
    calls.append((type(self.patch_embed.kernel).__name__, images.shape[0],
                  None if keep is None else tuple(keep.shape)))
    return original(self, images, **kw)

  monkeypatch.setattr(vit.VisionTransformer, "__call__", spy)
  with jax.set_mesh(mesh):
    state = jax.eval_shape(trainer._init)
    jax.eval_shape(trainer._step, state, {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                          for k, v in two_view_batch(c).items()})
  assert calls == [("Param", 8, (8, 4, 4)), ("EmaParam", 8, None)]


@pytest.fixture(scope="module")
def two_steps():
  """(trainer, host states before / after each of two steps, metrics of each step)."""
  c = tiny_config()
  trainer, mesh = one_device_trainer(c)
  with jax.set_mesh(mesh):
    state = trainer.init()
    states, metrics = [jax.device_get(state)], []
    for step in range(2):
      state, m = trainer.step(state, two_view_batch(c, seed=step))
      states.append(jax.device_get(state))
      metrics.append(jax.device_get(m))
  return trainer, states, metrics


def test_teacher_is_extra_with_no_gradient_and_no_optimizer_state(two_steps):
  trainer, states, _ = two_steps
  state = states[0]
  assert set(state["params"]) == {"student", "predictor"}
  assert set(state["extra"]) == {"teacher"}
  opt_paths = jax.tree.leaves(trees.names(state["opt_state"]))
  assert opt_paths and not any("teacher" in p for p in opt_paths)
  # The loss does depend on the teacher's weights, yet their gradient is exactly zero.
  obj = trainer.objective
  batch = two_view_batch(trainer.config)

  def loss_of(params, extra):
    return obj.loss(nnx.merge(trainer.graphdef, params, extra), batch, jax.random.key(1), 0)[0]

  loss_and_grads = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1)))
  loss, (g_params, g_teacher) = loss_and_grads(state["params"], state["extra"])
  assert jax.tree.structure(g_params) == jax.tree.structure(state["params"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_teacher))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_params)) > 0
  shifted = jax.tree.map(lambda x: x + 0.1, state["extra"])
  assert abs(float(loss_and_grads(state["params"], shifted)[0] - loss)) > 1e-4


def test_ema_update_equals_the_formula_over_two_steps(two_steps):
  trainer, states, metrics = two_steps
  # init_extra: the teacher starts as an exact copy of the student
  for t, s in zip(jax.tree.leaves(states[0]["extra"]["teacher"]),
                  jax.tree.leaves(states[0]["params"]["student"])):
    np.testing.assert_array_equal(t, s)
  for step in range(2):
    old, new = states[step], states[step + 1]
    m0, total = trainer.config.extrema.ema_momentum, trainer.objective.total_steps()
    m = 1 - (1 - m0) * (1 + math.cos(math.pi * step / total)) / 2
    assert float(metrics[step]["ema_momentum"]) == pytest.approx(m, abs=1e-7)
    for t_new, t_old, s in zip(jax.tree.leaves(new["extra"]["teacher"]),
                               jax.tree.leaves(old["extra"]["teacher"]),
                               jax.tree.leaves(new["params"]["student"])):
      np.testing.assert_allclose(t_new, m * t_old + (1 - m) * s, rtol=1e-6, atol=1e-7)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(states[2]["extra"]["teacher"]),
      jax.tree.leaves(states[0]["extra"]["teacher"])))
  assert moved > 0


def test_momentum_schedule_values():
  total = 1000
  assert float(ema.momentum(0, 0.996, total)) == pytest.approx(0.996)
  assert float(ema.momentum(500, 0.996, total)) == pytest.approx(0.998)
  assert float(ema.momentum(1000, 0.996, total)) == pytest.approx(1.0)
  for t in (1, 123, 999):
    ref = 1 - (1 - 0.996) * (1 + math.cos(math.pi * t / total)) / 2
    assert float(ema.momentum(t, 0.996, total)) == pytest.approx(ref, abs=1e-7)
  c = tiny_config(total_samples=8 * 10 + 1)  # 11 steps, as train.total_steps counts them
  assert objectives.get(c).total_steps() == train.total_steps(c) == 11


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_byol_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(4, 3, 8)), rng.normal(size=(4, 8))
  cos = np.einsum("bkd,bd->bk", _np_normalize(pred), _np_normalize(target))
  ref = np.mean(np.sum((_np_normalize(pred) - _np_normalize(target)[:, None]) ** 2, -1))
  loss, mean_cos = extrema.byol_loss(jnp.asarray(pred, jnp.float32),
                                     jnp.asarray(target, jnp.float32))
  assert float(loss) == pytest.approx(ref, rel=1e-5)
  assert float(loss) == pytest.approx(np.mean(2 - 2 * cos), rel=1e-5)
  assert float(mean_cos) == pytest.approx(cos.mean(), rel=1e-5)


def test_infonce_loss_matches_numpy():
  """The official contrastive_loss per mask: CE(q k^T / T, diagonal) * 2T, averaged over K."""
  rng = np.random.default_rng(1)
  pred, target, t = rng.normal(size=(5, 3, 8)), rng.normal(size=(5, 8)), 0.2
  p, z = _np_normalize(pred), _np_normalize(target)
  ref = 0.0
  for k in range(3):
    logits = p[:, k] @ z.T / t
    logsumexp = np.log(np.exp(logits).sum(1))
    ref += np.mean(logsumexp - np.diag(logits)) * 2 * t / 3
  loss, mean_cos = extrema.infonce_loss(jnp.asarray(pred, jnp.float32),
                                        jnp.asarray(target, jnp.float32), t)
  assert float(loss) == pytest.approx(ref, rel=1e-5)
  assert float(mean_cos) == pytest.approx(np.einsum("bkd,bd->bk", p, z).mean(), rel=1e-5)


def test_validation_loss_equals_per_mask_numpy_reference():
  """The B*K student pass equals K separate passes (one per mask slice), and the loss is
  the NumPy mean over masks of 2 - 2cos against one teacher target per image."""
  c = tiny_config()
  obj = objectives.get(c)
  model = obj.build(nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in two_view_batch(c).items()}
  keep, _ = extrema.masking.disjoint_keep_indices(jax.random.key(0), 8, 16, 0.75, 4)

  @nnx.jit
  def both(model, batch):
    preds = [model.predictor(model.student(batch["image"], keep_indices=keep[:, j]))
             for j in range(4)]
    return obj.validation_loss(model, batch), jnp.stack(preds, 1), model.teacher(batch["image2"])

  (loss, metrics), pred, target = both(model, batch)
  cos = np.sum(_np_normalize(np.asarray(pred)) * _np_normalize(np.asarray(target))[:, None], -1)
  assert float(loss) == pytest.approx(np.mean(2 - 2 * cos), rel=1e-5)
  assert float(metrics["tokens_kept"]) == 4
  assert float(both(model, batch)[0][0]) == float(loss)  # fixed masks, no drop-path


def _np_ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _np_dense(x, p, n_in=1):
  k = np.asarray(p["kernel"])
  y = np.tensordot(x, k, axes=(list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))
  return y + np.asarray(p["bias"])


def _np_gelu(x):
  return np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))


def test_class_attention_pool_matches_numpy():
  width, heads_n, mlp = 8, 2, 16
  pool = heads.ClassAttentionPool(width, heads_n, mlp, rngs=nnx.Rngs(0), depth=2,
                                  layer_scale=0.1)
  p = nnx.to_pure_dict(nnx.state(pool, nnx.Param))
  for blk in (0, 1):  # layer scale starts at 0.1 everywhere
    np.testing.assert_array_equal(p["blocks"][blk]["layer_scale_attn"],
                                  np.full(width, 0.1, np.float32))
  tokens = np.random.default_rng(0).normal(size=(3, 5, width)).astype(np.float32)
  cls = np.broadcast_to(np.asarray(p["cls_token"]), (3, 1, width))
  for blk in range(2):
    b = p["blocks"][blk]
    u = _np_ln(np.concatenate([cls, tokens], 1), b["ln1"], 1e-6)
    q = _np_dense(u[:, :1], b["attn"]["q"])  # [B, 1, H, hd]
    k, v = _np_dense(u, b["attn"]["k"]), _np_dense(u, b["attn"]["v"])
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads_n)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = _np_dense(np.einsum("bhqk,bkhd->bqhd", att, v), b["attn"]["out"], n_in=2)
    cls = cls + np.asarray(b["layer_scale_attn"]) * y
    h = _np_dense(_np_gelu(_np_dense(_np_ln(cls, b["ln2"], 1e-6), b["mlp"]["fc1"])),
                  b["mlp"]["fc2"])
    cls = cls + np.asarray(b["layer_scale_mlp"]) * h
  ref = _np_ln(cls, p["ln"], 1e-6)[:, 0]
  np.testing.assert_allclose(np.asarray(pool(jnp.asarray(tokens))), ref, rtol=1e-4, atol=1e-5)


def test_mlp_head_layout_init_and_forward():
  head = heads.MlpHead(12, 40, 6, rngs=nnx.Rngs(0), num_layers=3)
  p = nnx.to_pure_dict(nnx.state(head, nnx.Param))
  shapes = [np.asarray(p["layers"][i]["kernel"]).shape for i in range(3)]
  assert shapes == [(12, 40), (40, 40), (40, 6)] and len(p["norms"]) == 2
  for i, (fan_in, fan_out) in enumerate(shapes):  # xavier-uniform bound, zero biases
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(p["layers"][i]["kernel"]).max() <= bound
    assert np.abs(p["layers"][i]["kernel"]).max() > 0.8 * bound
    np.testing.assert_array_equal(p["layers"][i]["bias"], 0)
  axes = [head.layers[i].kernel.axes for i in range(3)]
  assert axes == [("embed", "mlp"), ("mlp", "embed"), ("embed", "mlp")]
  x = np.random.default_rng(1).normal(size=(4, 12)).astype(np.float32)
  h = x
  for i in range(3):
    h = _np_dense(h, p["layers"][i])
    if i < 2:
      h = _np_gelu(_np_ln(h, p["norms"][i], 1e-5))
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(x))), h, rtol=1e-4, atol=1e-5)


def test_image_features_are_the_teachers_representation(two_steps):
  trainer, states, _ = two_steps
  model = trainer.model(states[2])
  images = jnp.asarray(two_view_batch(trainer.config, seed=5)["image"])
  feats = trainer.objective.image_features(model, images)
  assert feats.shape == (8, 32)  # the class-attention output, before the projector
  np.testing.assert_allclose(feats, model.teacher.represent(images), rtol=1e-6)
  assert float(jnp.abs(feats - model.student.represent(images)).max()) > 1e-6


def test_named_features_for_evaluators(two_steps):
  """'teacher_prenorm' (official main_lincls: norm = Identity), 'student', and the
  evaluators' `features` key, checked against the objective by config_check."""
  trainer, states, _ = two_steps
  model = trainer.model(states[2])
  obj = trainer.objective
  images = jnp.asarray(two_view_batch(trainer.config, seed=5)["image"])
  pre = obj.teacher_prenorm(model, images)
  tokens = model.teacher.encoder(images)["tokens"]
  np.testing.assert_allclose(pre, model.teacher.pool(tokens, norm=False), rtol=1e-6)
  np.testing.assert_allclose(model.teacher.pool.ln(pre), obj.image_features(model, images),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(obj.student_features(model, images),
                             model.student.represent(images), rtol=1e-6)
  features = trainer.features(states[2])
  np.testing.assert_allclose(features.image(np.asarray(images), "teacher_prenorm"), pre,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no image features 'teacher_pre'"):
    features.image(np.asarray(images), "teacher_pre")
  c = tiny_config()
  c.evals = {"k": dict(type="knn", features="studnet")}
  with pytest.raises(config_check.ConfigError, match=r"config.evals.k.features: 'studnet'"):
    config_check.validate(c, num_devices=1)


def test_teacher_has_no_drop_path_student_does():
  c = tiny_config(**{"model.image.drop_path": 0.3})
  model = objectives.get(c).build(nnx.Rngs(0))
  assert model.student.encoder.encoder.blocks[-1].drop_path_rate == pytest.approx(0.3)
  assert all(b.drop_path_rate == 0.0 for b in model.teacher.encoder.encoder.blocks)


@pytest.mark.parametrize("key,value,message", [
    ("extrema.num_masks", 5, "config.extrema.num_masks / config.mask_ratio: 5 disjoint masks"),
    ("mask_ratio", 0.95, "keeps no patch"),
    ("extrema.num_masks", 0, "num_masks must be >= 1"),
    ("model.image.cls_token", True, "config.model.image.cls_token"),
    ("model.image.pool", "gap", "config.model.image.pool"),
    ("data.format", "image", "config.data.format: ExtreMA trains on 'two_views'"),
    ("model.type", "two_towers", "config.model.type"),
    ("extrema.ema_momentum", 1.5, "config.extrema.ema_momentum"),
    ("extrema.proj_dim", 0, "config.extrema.proj_dim"),
    ("extrema.loss", "mse", "config.extrema.loss: 'mse' not in"),
    ("extrema.temperature", 0.0, "config.extrema.temperature"),
    ("data.color_jitter_p", 1.5, "config.data.color_jitter_p"),
    ("data.color_jitter", (0.4, 0.4, 0.2, 0.7), "config.data.color_jitter"),
])
def test_bad_values_name_their_key(key, value, message):
  c = tiny_config(**{key: value})
  with pytest.raises(config_check.ConfigError, match=message.replace("(", r"\(")):
    config_check.validate(c, num_devices=8)


def test_recipes(two_steps):
  b16 = load_config("extrema_b16")
  assert (b16.mask_ratio, b16.extrema.num_masks) == (0.8, 5)
  assert (b16.optim.lr_per_256, b16.optim.b2, b16.optim.weight_decay) == (1.5e-4, 0.95, 0.1)
  assert b16.total_samples == 300 * 1_281_167
  assert b16.optim.warmup_samples == 40 * 1_281_167
  assert b16.model.image.drop_path == 0.1 and not b16.model.image.cls_token
  b16_90 = load_config("extrema_b16", "90x8")
  assert (b16_90.mask_ratio, b16_90.extrema.num_masks) == (0.9, 8)
  with pytest.raises(ValueError, match="90x8"):
    load_config("extrema_b16", "50x2")
  debug = load_config("extrema_debug")
  assert (debug.mask_ratio, debug.extrema.num_masks, debug.extrema.loss) == (0.5, 2, "infonce")
  assert b16.extrema.loss == "byol" and b16.model.image.init == "flip"
  # layer scales, biases, norms and tokens get no weight decay (timm's add_weight_decay)
  trainer, states, _ = two_steps
  c, params = trainer.config, states[0]["params"]
  decayed = {p for p, d in zip(jax.tree.leaves(trees.names(params)),
                               jax.tree.leaves(optim.decay_mask(c, params))) if d}
  assert not any("layer_scale" in p or "cls_token" in p or p.endswith("bias")
                 for p in decayed)
  assert "student/pool/blocks/0/mlp/fc1/kernel" in decayed


def test_benchmark_sweeps_the_number_of_masks(capsys, monkeypatch):
  from flip_jax import benchmark
  monkeypatch.setattr(benchmark, "measured_matmul_peak", lambda: 1e9)
  c = tiny_config(**{"model.image.depth": 1, "extrema.pool_depth": 1})  # compiles faster
  rows = benchmark.run(c, ["0.75"], batch=8, steps=1, sweep="extrema.num_masks=1,5,4")
  assert [(r["mask_ratio"], r["extrema.num_masks"]) for r in rows] == [(0.75, 1), (0.75, 4)]
  assert "5 disjoint masks of 4 patches" in capsys.readouterr().out  # printed as skipped
  assert rows[0]["model_flops_per_step"] < rows[1]["model_flops_per_step"]
  assert all(r["step_s"] > 0 for r in rows)
  assert benchmark.parse_sweep(c, "model.image.cls_token=false") == (
      "model.image.cls_token", [False])
  with pytest.raises(ValueError, match="no key 'extrema.nope'"):
    benchmark.parse_sweep(c, "extrema.nope=1")


def test_scanned_student_and_ema_teacher_equal_unrolled():
  """extrema_b16 scans its towers: a scanned student (drop-path on) and its EMA teacher
  take the same step as unrolled ones; the teacher's stacked weights are the unrolled
  ones once unstacked (trees.unstack)."""
  out = {}
  for scan in (False, True):
    c = tiny_config(**{"model.image.scan": scan, "model.image.drop_path": 0.1,
                       "model.image.remat": "dots_no_batch" if scan else "none"})
    trainer, mesh = one_device_trainer(c)
    with jax.set_mesh(mesh):
      state = trainer.init()
      state, m = trainer.step(state, two_view_batch(c))
    out[scan] = (float(m["loss"]), trees.unstack(trees.flatten(jax.device_get(state["extra"]))))
  assert out[True][0] == pytest.approx(out[False][0], abs=1e-6)
  assert out[True][1].keys() == out[False][1].keys()
  for name, value in out[False][1].items():
    np.testing.assert_allclose(out[True][1][name], value, atol=1e-6, err_msg=name)
