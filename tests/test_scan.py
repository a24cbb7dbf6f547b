"""Scanned towers (`model.*.scan`): the same params, loss and gradients as the unrolled
ones, and checkpoints that either kind reads."""
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
  assert trees.flatten(params_u).keys() == trees.flatten(params_s).keys()
  for a, b in zip(jax.tree.leaves(params_u), jax.tree.leaves(params_s)):
    np.testing.assert_array_equal(a, b)  # one layout, one init
  np.testing.assert_allclose(loss_s, loss_u, rtol=0, atol=1e-6)
  assert_grads_close(grads_s, grads_u)
  if remat == "none":  # drop-path really acted: the deepest block's gradient needs it
    no_drop = scan_config(True, remat)
    no_drop.model.image.drop_path = 0.0
    name = "image/encoder/blocks/2/mlp/fc1/kernel"
    moved = trees.flatten(loss_and_grads(no_drop, mesh)[1])[name] - trees.flatten(grads_u)[name]
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
    assert_grads_close(nnx.to_pure_dict(out[1][1]), nnx.to_pure_dict(out[0][1]))


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
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(a, b)
  # resume the scanned run unrolled; then the unrolled checkpoint back into a scanned model
  resumed = jax.device_get(train.run(unrolled, workdir)["state"])
  assert int(resumed["step"]) == 3
  params = train.load_init_params(train.Trainer(scanned, mesh), workdir)
  for a, b in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


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
