"""The trainer: sharding equivalence, sharded state, bit-identical resume, init_from."""
import jax
import numpy as np
import pytest

from flip_jax import checkpoint, sharding, train, writers
from flip_jax.data import transforms
from helpers import random_batch, tiny_flip_config


def one_step(config, mesh):
  trainer = train.Trainer(config, mesh)
  batch = random_batch(config)
  with jax.set_mesh(mesh):
    state = trainer.init()
    b = {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in batch.items()}
    state, metrics = trainer.step(state, b)
  return trainer, jax.device_get(state), jax.device_get(metrics)


def test_one_step_equal_across_meshes():
  c = tiny_flip_config(fsdp_min_size=0)
  # The key bias's gradient is analytically zero (softmax ignores a per-query constant);
  # with Adam's default eps its float noise would become a full +-lr step whose sign
  # depends on summation order. A larger eps keeps noise small and real steps intact.
  c.optim.update(warmup_samples=0, eps=1e-4)
  results = {}
  for name, shape, devices in [("single", {"data": 1}, jax.devices()[:1]),
                               ("data8", {"data": 8}, None),
                               ("data4_fsdp2", {"data": 4, "fsdp": 2}, None)]:
    mesh = sharding.make_mesh(shape, devices)
    results[name] = one_step(c, mesh)[1:]
  ref_state, ref_m = results["single"]
  for name in ("data8", "data4_fsdp2"):
    state, m = results[name]
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert float(ref_m["lr"]) > 0  # the step really moved the params
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_state["params"],
                                       train.Trainer(c, sharding.make_mesh(
                                           {"data": 1}, jax.devices()[:1])).init()["params"]))
  assert max(moved) > 1e-4


def test_params_and_optimizer_state_are_sharded_by_the_rules():
  c = tiny_flip_config(fsdp_min_size=256)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  trainer = train.Trainer(c, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init()
  kernel = state["params"]["image"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]  # 32x64
  assert kernel.sharding.spec == jax.P("fsdp", None)
  assert kernel.addressable_shards[0].data.shape == (16, 64)
  bias = state["params"]["image"]["encoder"]["blocks"][0]["mlp"]["fc2"]["bias"]  # 32 < 256
  assert bias.sharding.spec == jax.P(None)
  # Adam moments follow their param
  mus = [x for x in jax.tree.leaves(state["opt_state"]) if x.shape == kernel.shape]
  assert mus and all(m.sharding.spec == jax.P("fsdp", None) for m in mus)
  # the text embedding [vocab, embed] is split over fsdp on its embed dim
  emb = state["params"]["text"]["token_emb"]
  assert emb.sharding.spec == jax.P(None, "fsdp")


def final_params(workdir):
  mgr = checkpoint.manager(workdir, every_steps=1, keep=1)
  return checkpoint.load_params(workdir), mgr.latest_step()


def test_resume_is_bit_identical(tmp_path):
  c = tiny_flip_config()
  c.total_samples = 16 * 10
  c.ckpt_every_steps = 3
  c.log_every_steps = 1
  train.run(c, str(tmp_path / "straight"))
  train.run(c, str(tmp_path / "resumed"), until_step=5)  # "preempted" at step 5
  assert final_params(str(tmp_path / "resumed"))[1] == 5
  train.run(c, str(tmp_path / "resumed"))
  a, step_a = final_params(str(tmp_path / "straight"))
  b, step_b = final_params(str(tmp_path / "resumed"))
  assert step_a == step_b == 10
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  rows = [r for r in writers.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
          if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, 11))  # none repeated, none skipped
  straight = [r for r in writers.read_jsonl(str(tmp_path / "straight" / "metrics.jsonl"))
              if "loss" in r]
  assert [r["loss"] for r in rows] == [r["loss"] for r in straight]


def test_init_from_loads_params_resamples_pos_emb_and_drops_optimizer(tmp_path):
  c = tiny_flip_config()
  c.model.image.pos_emb = "learned"
  c.total_samples = 16 * 2
  train.run(c, str(tmp_path / "pre"))
  pre, _ = final_params(str(tmp_path / "pre"))
  ft = tiny_flip_config(image_size=48)
  ft.model.image.pos_emb = "learned"
  ft.init_from = str(tmp_path / "pre")
  _, ft = train.resolve_tokenizer(ft, str(tmp_path / "ft"))  # the same digits vocab as "pre"
  mesh = sharding.make_mesh({"data": -1})
  trainer = train.Trainer(ft, mesh)
  params = train.load_init_params(trainer, ft.init_from)
  assert params["image"]["pos_emb"].shape == (1 + 36, 32)
  np.testing.assert_array_equal(params["image"]["pos_emb"][0], pre["image"]["pos_emb"][0])
  np.testing.assert_array_equal(params["text"]["token_emb"], pre["text"]["token_emb"])
  out = train.run(ft, str(tmp_path / "ft"), until_step=1)
  assert int(out["state"]["step"]) == 1
  # a fresh optimizer: Adam's count restarted (1 after one step), not continued (3)
  counts = [int(x) for x in jax.tree.leaves(out["state"]["opt_state"]) if x.shape == () and
            x.dtype == np.int32]
  assert counts and set(counts) == {1}


def test_init_from_rejects_a_checkpoint_of_another_shape(tmp_path):
  c = tiny_flip_config()
  c.total_samples = 16 * 2
  train.run(c, str(tmp_path / "pre"))
  other = tiny_flip_config()
  other.model.image.width = 64
  other.model.image.heads = 4
  trainer = train.Trainer(other, sharding.make_mesh({"data": -1}))
  with pytest.raises(ValueError, match=r"param 'image/.*' has shape"):
    train.load_init_params(trainer, str(tmp_path / "pre"))


def test_step_on_uint8_images_equals_step_on_host_normalised_images():
  """The pipeline sends uint8 images and the step normalises them on the device
  (Objective.prepare); a host-normalised float batch trains the same."""
  c = tiny_flip_config()
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  trainer = train.Trainer(c, mesh)
  batch = random_batch(c)
  pixels = np.random.default_rng(1).integers(0, 256, batch["image"].shape, dtype=np.uint8)
  results = []
  with jax.set_mesh(mesh):
    for image in (pixels, transforms.normalize(pixels, c.data.mean, c.data.std)):
      state, metrics = trainer.step(trainer.init(), dict(batch, image=image))
      results.append(jax.device_get((state["params"], metrics["loss"])))
  (params_u8, loss_u8), (params_f32, loss_f32) = results
  np.testing.assert_allclose(loss_u8, loss_f32, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(params_u8), jax.tree.leaves(params_f32)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
