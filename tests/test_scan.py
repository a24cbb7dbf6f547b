"""Scanned towers (`model.*.scan`): stacked params that name as the unrolled ones
(`trees.unstack`), the same loss and gradients, and checkpoints that either kind reads."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flip_jax import checkpoint, config_io, sharding, train, trees
from flip_jax.models import layers, swin
from helpers import assert_grads_close, loss_and_grads, tiny_flip_config


def scan_config(scan: bool, remat: str = "none"):
  """Tiny FLIP with a 3-block ViT (drop-path 0.2) and a 2-block text tower."""
  c = tiny_flip_config(fsdp_min_size=0)
  c.model.image.update(depth=3, drop_path=0.2, remat=remat, scan=scan)
  c.model.text.update(remat=remat, scan=scan)
  return c


@pytest.mark.parametrize("remat", sorted(layers.REMAT_POLICIES))
def test_scanned_towers_equal_unrolled_on_8_devices(remat):
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  loss_u, grads_u, params_u, _ = loss_and_grads(scan_config(False, remat), mesh)
  loss_s, grads_s, params_s, _ = loss_and_grads(scan_config(True, remat), mesh)
  stacked = trees.flatten(params_s)
  assert "image/encoder/blocks/stacked/mlp/fc1/kernel" in stacked
  assert stacked["image/encoder/blocks/stacked/mlp/fc1/kernel"].shape[0] == 3
  params_u, params_s = trees.flatten(params_u), trees.unstack(stacked)
  assert params_u.keys() == params_s.keys()
  for name in params_u:
    np.testing.assert_array_equal(params_u[name], params_s[name])  # one seed, one init
  np.testing.assert_allclose(loss_s, loss_u, rtol=0, atol=1e-6)
  grads_u, grads_s = trees.flatten(grads_u), trees.unstack(trees.flatten(grads_s))
  assert_grads_close(grads_s, grads_u)
  if remat == "none":  # drop-path really acted: the deepest block's gradient needs it
    no_drop = scan_config(True, remat)
    no_drop.model.image.drop_path = 0.0
    name = "image/encoder/blocks/2/mlp/fc1/kernel"
    moved = trees.unstack(trees.flatten(loss_and_grads(no_drop, mesh)[1]))[name] - grads_u[name]
    assert np.abs(moved).max() > 1e-4


def test_scanned_swin_equals_unrolled():
  # stage 1: two (plain, shifted) pairs then an odd block; stage 0 runs unrolled
  kw = dict(image_size=32, variant="custom", embed_dim=16, depths=(2, 5), heads=(2, 4),
            patch=2, window=4, drop_path=0.3)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  for remat in ("none", "full"):
    out = []
    for scan in (False, True):
      m = swin.SwinTransformerV2(rngs=nnx.Rngs(0), remat=remat, scan=scan, **kw)

      def loss(model):
        return (model(x, rng=jax.random.key(5))["pooled"] ** 2).mean()

      out.append(nnx.value_and_grad(loss)(m))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=0, atol=1e-6)
    unrolled = [trees.unstack(trees.flatten(nnx.to_pure_dict(g))) for _, g in out]
    assert_grads_close(unrolled[1], unrolled[0])
  # the pairs are stored stacked: blocks 2 + 2p + k at 'blocks/stacked_2_2/<k>', block 6 apart
  names = trees.flatten(nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  assert names["blocks/stacked_2_2/1/attn/q/kernel"].shape == (2, 32, 4, 8)
  assert {n.split("/")[1] for n in names if n.startswith("blocks/")} == {
      "0", "1", "stacked_2_2", "6"}


def test_swin_checkpoints_convert_between_layouts(tmp_path):
  """A scanned SwinV2's params (stacked pairs beside unrolled blocks) relaid out as an
  unrolled model's and back: abstractly, in value, and through an Orbax checkpoint."""
  kw = dict(image_size=32, variant="custom", embed_dim=16, depths=(2, 5), heads=(2, 4),
            patch=2, window=4)
  params = {scan: nnx.to_pure_dict(nnx.state(swin.SwinTransformerV2(
      rngs=nnx.Rngs(0), scan=scan, **kw), nnx.Param)) for scan in (False, True)}
  assert_same_by_name(params[True], params[False])  # one seed, the same weights
  for src, dst in ((True, False), (False, True)):
    moved = trees.relayout(params[src], params[dst])
    assert jax.tree.structure(moved) == jax.tree.structure(params[dst])
    assert_same_by_name(moved, params[dst])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params[dst])
    laid = trees.as_layout(abstract, list(trees.flatten(params[src])))
    assert (trees.flatten(jax.tree.map(lambda s: s.shape, laid))
            == trees.flatten(jax.tree.map(np.shape, params[src])))
    mgr = checkpoint.manager(str(tmp_path / f"from_{src}"), every_steps=1, keep=1,
                             use_async=False)
    checkpoint.save(mgr, 1, params[src])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = checkpoint.restore(mgr, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params[dst]))
    mgr.close()
    assert jax.tree.structure(restored) == jax.tree.structure(params[dst])
    assert_same_by_name(restored, params[dst])


def test_scan_compiles_one_block():
  """The scanned ViT's program holds one block's matmuls, the unrolled one depth x as many:
  per block q, k, v, out, fc1, fc2 and attention's two; plus the patch embedding."""
  from flip_jax.models import vit
  x = jnp.zeros((2, 32, 32, 3))

  def dots(scan):
    m = vit.VisionTransformer(image_size=32, variant="custom/8", width=32, depth=6, heads=2,
                              mlp_dim=64, scan=scan, rngs=nnx.Rngs(0))
    return jax.jit(lambda m: m(x)["pooled"]).lower(m).as_text().count("dot_general")

  assert (dots(False), dots(True)) == (1 + 6 * 8, 1 + 8)


def test_checkpoints_load_across_scanned_and_unrolled(tmp_path):
  """A scanned run's checkpoint resumes unrolled (and back): same state, same numbers."""
  scanned = scan_config(True)
  scanned.update(total_samples=16 * 3, ckpt_every_steps=1)
  workdir = str(tmp_path / "run")
  state = jax.device_get(train.run(scanned, workdir, until_step=2)["state"])
  mesh = sharding.make_mesh({"data": -1})
  # the run's own config (its vocabulary is the tokenizer's), unrolled and scanned
  unrolled, scanned = config_io.read(workdir), config_io.read(workdir)
  unrolled.model.image.scan = unrolled.model.text.scan = False
  assert scanned.model.image.scan and scanned.model.text.scan
  for config in (unrolled, scanned):
    trainer = train.Trainer(config, mesh)
    mgr = checkpoint.manager(workdir, every_steps=1, keep=3, use_async=False)
    with jax.set_mesh(mesh):
      restored = jax.device_get(checkpoint.restore(mgr, trainer.abstract_state()))
    mgr.close()
    assert jax.tree.structure(restored) == jax.tree.structure(trainer.abstract_state())
    assert_same_by_name(restored, state)
  # resume the scanned run unrolled; then the unrolled checkpoint back into a scanned model
  resumed = jax.device_get(train.run(unrolled, workdir)["state"])
  assert int(resumed["step"]) == 3
  assert "image/encoder/blocks/0/ln1/scale" in trees.flatten(resumed["params"])
  params = train.load_init_params(train.Trainer(scanned, mesh), workdir)
  assert "image/encoder/blocks/stacked/ln1/scale" in trees.flatten(params)
  assert_same_by_name(params, resumed["params"])


def assert_same_by_name(a, b):
  """Equal trees once scanned blocks are named as unrolled ones."""
  a, b = trees.unstack(trees.flatten(a)), trees.unstack(trees.flatten(b))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_restart_reads_the_step_from_the_compile_cache(tmp_path):
  """The second start of a run compiles nothing new: every executable it needs (the step
  first of all) is in `<workdir>/compile_cache`, and both starts log compile_s."""
  from flip_jax import writers
  c = tiny_flip_config()
  # Neither start reaches the run's last step, whose end-of-run logging jits more: both
  # starts run the same programs, whatever earlier tests left in jax's in-memory caches.
  c.total_samples = 16 * 3
  workdir = str(tmp_path / "run")
  cache = os.path.join(workdir, "compile_cache")
  train.run(c, workdir, until_step=1)
  entries = sorted(os.listdir(cache))
  assert entries  # the step, at least
  train.run(c, workdir, until_step=2)
  assert sorted(os.listdir(cache)) == entries
  rows = [r for r in writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "compile_s" in r]
  assert [r["step"] for r in rows] == [1, 2] and all(r["compile_s"] > 0 for r in rows)


def test_plan_counts_every_scanned_layer():
  """XLA's cost analysis counts a loop body once; the plan adds the other iterations
  (flip_jax/loop_cost.py), so a scanned step's matmul FLOPs equal the unrolled one's and
  its bytes and collectives come out close."""
  from flip_jax import loop_cost, plan  # the planner imports libtpu's topologies
  rows, jaxprs = {}, {}
  for scan in (False, True):
    c = tiny_flip_config()
    c.model.image.update(scan=scan, depth=4)
    c.model.text.update(scan=scan, depth=3)
    c.mesh.update(data=-1, fsdp=1)
    c.batch_size = 64
    rows[scan] = plan.plan(c, "v3:2x2")
    trainer = train.Trainer(plan.resolve(c), sharding.make_mesh(c.mesh, jax.devices()[:1]))
    with jax.set_mesh(trainer.mesh):
      jaxprs[scan] = trainer.step.trace(trainer.abstract_state(),
                                        plan._batch_sds(trainer)).jaxpr.jaxpr
  assert loop_cost.matmul_flops(jaxprs[True]) == loop_cost.matmul_flops(jaxprs[False])
  assert rows[False]["loop_flops_added"] == rows[False]["loop_bytes_added"] == 0
  scanned = rows[True]
  assert scanned["loop_flops_added"] == (loop_cost.matmul_flops(jaxprs[True]) - loop_cost.
                                         matmul_flops(jaxprs[True], scan_trips=False)
                                         ) / scanned["devices"]
  assert scanned["loop_bytes_added"] > 0
  # Elementwise work inside the loops is not added: ~15% of this tiny model's FLOPs.
  np.testing.assert_allclose(scanned["flops_per_device"], rows[False]["flops_per_device"],
                             rtol=0.2)
  np.testing.assert_allclose(scanned["bytes_accessed_per_device"],
                             rows[False]["bytes_accessed_per_device"], rtol=0.3)


def test_trip_count_of_a_tpu_while_loop():
  """The TPU compiler's text carries no known_trip_count: the bound comes from the
  condition `counter < N`."""
  from flip_jax import hlo_stats  # only this test reads HLO text
  hlo = """%cond (p: (s32[], f32[4])) -> pred[] {
  %constant.1 = s32[]{:T(256)} constant(24)
  %p = (s32[]{:T(256)}, f32[4]{0}) parameter(0)
  %gte = s32[]{:T(256)} get-tuple-element(%p), index=0
  ROOT %lt.9 = pred[]{:T(1024)} compare(%gte, %constant.1), direction=LT
}
"""
  bodies = {"cond": hlo.splitlines()[1:-1]}
  assert hlo_stats.trip_count("condition=%cond, body=%body", bodies) == 24
  assert hlo_stats.trip_count('body=%b, backend_config={"known_trip_count":{"n":"7"}}',
                              bodies) == 7
  assert hlo_stats.trip_count("condition=%other, body=%body", bodies) == 1


def test_fill_reads_either_layout_into_either_model():
  """`trees.fill`: stacked or unrolled weights into a stacked or unrolled model; a missing
  layer is named."""
  f32 = np.float32
  stacked = {"enc/blocks/stacked/w": np.arange(6, dtype=f32).reshape(3, 2), "head": np.ones(2, f32)}
  unrolled = trees.unstack(stacked)
  assert sorted(unrolled) == ["enc/blocks/0/w", "enc/blocks/1/w", "enc/blocks/2/w", "head"]
  np.testing.assert_array_equal(unrolled["enc/blocks/1/w"], [2, 3])
  sds = jax.ShapeDtypeStruct
  as_stacked = {"enc": {"blocks": {"stacked": {"w": sds((3, 2), f32)}}}, "head": sds((2,), f32)}
  as_unrolled = {"enc": {"blocks": {i: {"w": sds((2,), f32)} for i in range(3)}},
                 "head": sds((2,), f32)}
  for source in (stacked, unrolled):
    assert_same_by_name(trees.fill(as_stacked, source, "src"), stacked)
    assert_same_by_name(trees.fill(as_unrolled, source, "src"), stacked)
  # a checkpoint's layout is taken only where it holds the model's layers
  assert trees.as_layout(as_stacked, list(unrolled)) == {**as_unrolled, "head": sds((2,), f32)}
  del unrolled["enc/blocks/2/w"]
  with pytest.raises(ValueError, match=r"src: has no param 'enc/blocks/2/w'"):
    trees.fill(as_stacked, unrolled, "src")
  assert trees.as_layout(as_stacked, list(unrolled)) == as_stacked


def test_scanned_params_are_stacked_and_sharded_per_layer():
  """One array per kind of param with an unsharded leading layer axis; FSDP splits a
  layer's slice as it would split the unrolled param."""
  c = scan_config(True)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  trainer = train.Trainer(c, mesh)
  specs = trees.flatten(trainer.specs["params"])
  unrolled = trees.flatten(train.Trainer(scan_config(False), mesh).specs["params"])
  for name, spec in specs.items():
    if trees.STACKED in name.split("/"):
      assert spec[0] is None, name
      assert tuple(spec[1:]) == tuple(unrolled[name.replace(trees.STACKED, "0")]), name
  assert not any("/blocks/0/" in n for n in specs if n.startswith(("image/", "text/")))


@pytest.mark.parametrize("encoder,flag", [("vit", "image"), ("swinv2", "swin")])
def test_layer_decay_refuses_a_scanned_encoder(encoder, flag):
  from flip_jax import config_check
  from helpers import load_config
  c = load_config("classify_debug", encoder)
  c.classify.layer_decay = 0.75
  c.model[flag].scan = True
  with pytest.raises(config_check.ConfigError, match=r"config.classify.layer_decay: .*"
                     rf"config.model.{flag}.scan=false"):
    config_check.validate(c, 1)
