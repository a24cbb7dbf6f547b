"""EVA: the masked cosine loss, the frozen teacher (loading, parity with PyTorch CLIP,
untouched by training, no optimizer state), validation loss, config errors, benchmark."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from flip_jax import benchmark, config_check, masking, objectives, sharding, train, trees
from flip_jax.data import transforms
from flip_jax.interop import ours
from flip_jax.models import from_config
from flip_jax.objectives import eva
from helpers import load_config, tiny_flip_config

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_eva_config(teacher_path, **overrides):
  """eva_debug shrunk: student width 32, depth 2, batch 16, 3 steps; float32."""
  c = load_config("eva_debug")
  c.model.image.update(width=32, depth=2, heads=2, mlp_dim=64)
  c.teacher.path = str(teacher_path)
  c.batch_size = 16
  c.total_samples = 16 * 3
  c.optim.warmup_samples = 16
  c.dtype = "float32"
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope="module")
def flip_teacher(tmp_path_factory):
  """An exported FLIP checkpoint (sin-cos positions, patch bias, GAP) with random weights."""
  c = tiny_flip_config()
  net = from_config.build(c, rngs=nnx.Rngs(0), dtype=np.float32)
  rng = np.random.default_rng(0)
  params = {k: np.asarray(v) + rng.normal(0, 0.05, np.shape(v)).astype(np.float32)
            for k, v in trees.flatten(nnx.to_pure_dict(nnx.state(net, nnx.Param))).items()}
  return ours.write_exported(str(tmp_path_factory.mktemp("flip") / "ckpt"), params=params,
                             config=c), params


def perturbed(model):
  """Random weights everywhere (transformers initialises biases/LayerNorms to 0/1)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def hf_teacher(tmp_path_factory):
  """A tiny HF CLIPVisionModelWithProjection with its own mean/std in preprocessor_config."""
  vision = transformers.CLIPVisionConfig(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, projection_dim=48)
  reference = perturbed(transformers.CLIPVisionModelWithProjection(vision))
  path = tmp_path_factory.mktemp("hf") / "clip"
  reference.save_pretrained(path)
  with open(path / "preprocessor_config.json", "w") as f:
    json.dump({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}, f)
  return str(path), reference


def model_and_objective(config):
  obj = objectives.get(config)
  trainer = train.Trainer(config, sharding.make_mesh({"data": -1}), obj)
  with jax.set_mesh(trainer.mesh):
    state = trainer.fresh_state()
  return trainer, state, obj


def teacher_targets(trainer, state, obj, images):
  """The step's regression targets for student-normalised `images`, jitted."""
  run = jax.jit(lambda state, x: obj.teacher_features(trainer.model(state), x))
  return np.asarray(run(state, jnp.asarray(images, jnp.float32)))


# ------------------------------------------------------------------ loss

def test_loss_matches_numpy_and_ignores_visible_predictions():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(3, 16, 8)), rng.normal(size=(3, 16, 8))
  mask = rng.random((3, 16)) < 0.4
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  want = -(unit(pred) * unit(target)).sum(-1)[mask].mean()
  loss = eva.masked_cosine_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target), mask)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  changed = np.where(mask[..., None], pred, rng.normal(size=pred.shape) * 100)
  np.testing.assert_allclose(eva.masked_cosine_loss(jnp.asarray(changed), target, mask),
                             want, rtol=1e-5)
  grad = jax.grad(eva.masked_cosine_loss)(jnp.asarray(pred), jnp.asarray(target), mask)
  assert not np.asarray(grad)[~mask].any() and np.asarray(grad)[mask].any()
  np.testing.assert_allclose(eva.masked_cosine_loss(jnp.asarray(target), target, mask), -1.0,
                             rtol=1e-6)


# ------------------------------------------------------------------ teacher

def test_flip_teacher_frozen_through_training_and_no_optimizer_state(tmp_path, flip_teacher):
  path, exported = flip_teacher
  c = tiny_eva_config(path)
  c.evals = {"val": dict(type="val_loss", dataset="digits", split="test", batch_size=16)}
  out = train.run(c, str(tmp_path / "run"))
  state = jax.device_get(out["state"])
  assert int(state["step"]) == 3
  teacher = trees.flatten(state["extra"]["teacher"])
  assert set(teacher) <= set(exported) and "image/patch_embed/bias" in teacher
  for name, value in teacher.items():  # bit-identical to the checkpoint after 3 steps
    np.testing.assert_array_equal(value, exported[name], err_msg=name)
  assert set(state["params"]) == {"image", "head"}
  opt_paths = trees.flatten(state["opt_state"])
  assert not any("teacher" in p for p in opt_paths)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  assert sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim) == 2 * n_params
  assert np.isfinite(out["metrics"]["eval/val/loss"])
  # Export and inference read the student encoder, not the regression head.
  from flip_jax import export, inference
  exported_dir = export.export(str(tmp_path / "run"), "orbax", str(tmp_path / "exported"))
  student = {f"image/{k}": v for k, v in trees.flatten(state["params"]["image"]).items()}
  got = ours.read(exported_dir).params
  assert set(got) == set(student)
  for name, value in student.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  images = np.random.default_rng(0).integers(0, 256, (3, c.image_size, c.image_size, 3),
                                             dtype=np.uint8)
  patches = inference.load(str(tmp_path / "run")).encode_patches(images)
  np.testing.assert_array_equal(patches, inference.load(exported_dir).encode_patches(images))
  assert patches.shape[0] == 3 and np.all(np.isfinite(patches))


def test_teacher_is_sharded_by_the_students_rules():
  c = tiny_eva_config("random:clip_tiny", fsdp_min_size=0)
  trainer = train.Trainer(c, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  student = trainer.specs["params"]["image"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
  teacher = trainer.specs["extra"]["teacher"]["image"]["encoder"]["blocks"][0]["mlp"]["fc1"]
  assert student == teacher["kernel"] == jax.P("fsdp", "tensor")
  assert teacher["bias"] == jax.P("tensor")


def test_flip_teacher_targets_equal_its_patch_embeddings(flip_teacher):
  from flip_jax import inference
  path, _ = flip_teacher
  trainer, state, obj = model_and_objective(tiny_eva_config(path))
  images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  x = transforms.normalize(images, trainer.config.data.mean, trainer.config.data.std)
  got = teacher_targets(trainer, state, obj, x)
  np.testing.assert_allclose(got, inference.load(path).encode_patches(images), atol=1e-5)


def test_open_clip_teacher_equals_the_checkpoint_it_was_exported_from(tmp_path):
  from flip_jax import export
  c = tiny_flip_config()  # what open_clip can express: CLS pooling, causal EOS-pooled text
  c.model.image.pool = "cls"
  c.model.text.update(causal=True, pool="last", eos_id=63)
  c.tokenizer = ""
  net = from_config.build(c, rngs=nnx.Rngs(1), dtype=np.float32)
  params = {k: np.asarray(v) + 0.05 for k, v in
            trees.flatten(nnx.to_pure_dict(nnx.state(net, nnx.Param))).items()}
  ckpt = ours.write_exported(str(tmp_path / "ours"), params=params, config=c)
  oc = export.export(ckpt, "open_clip", str(tmp_path / "oc"))
  x = np.random.default_rng(4).normal(size=(2, 32, 32, 3))
  got = {}
  for name, path in (("ours", ckpt), ("open_clip", oc)):
    trainer, state, obj = model_and_objective(tiny_eva_config(path))
    got[name] = teacher_targets(trainer, state, obj, x)
  np.testing.assert_allclose(got["open_clip"], got["ours"], atol=1e-5)


@pytest.mark.parametrize("layer,hidden,scan", [(-1, None, False), (1, 1, False),
                                               (-1, None, True)])
def test_hf_teacher_matches_pytorch_clip(hf_teacher, layer, hidden, scan):
  """Student batches are ImageNet-normalised, the teacher's preprocessor differs: the step
  maps one onto the other. Targets = post_layernorm(block output)[1:] @ visual_projection.
  A scanned student scans its teacher too (same checkpoint, same targets)."""
  path, reference = hf_teacher
  c = tiny_eva_config(path, **{"teacher.layer": layer, "model.image.scan": scan})
  c.data.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
  trainer, state, obj = model_and_objective(c)
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  student_x = transforms.normalize(images, IMAGENET_MEAN, IMAGENET_STD)
  got = teacher_targets(trainer, state, obj, student_x)
  teacher_x = transforms.normalize(images, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
  with torch.no_grad():
    out = reference(pixel_values=torch.tensor(teacher_x).permute(0, 3, 1, 2),
                    output_hidden_states=True)
    tokens = out.last_hidden_state if hidden is None else out.hidden_states[hidden]
    want = reference.visual_projection(reference.vision_model.post_layernorm(tokens[:, 1:]))
  assert got.shape == (3, 16, 48)
  np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
  built = trees.unstack(trees.flatten(state["extra"]["teacher"]["image"]["encoder"]))
  blocks = {name.split("/")[1] for name in built if name.startswith("blocks/")}
  assert blocks == ({"0"} if hidden else {"0", "1"})


def test_teacher_grid_resampled_or_refused(hf_teacher):
  path, reference = hf_teacher
  c = tiny_eva_config(path, **{"model.image.variant": "custom/4", "mask.num_masked": 24})
  with pytest.raises(config_check.ConfigError, match=r"config.teacher.resample: .* 4x4 .* "
                     r"8x8; set resample=True to run the teacher at 64 px"):
    config_check.validate(c, 8)
  c.teacher.resample = True
  config_check.validate(c, 8)
  trainer, state, obj = model_and_objective(c)
  pos = state["extra"]["teacher"]["image"]["pos_emb"]
  hf_pos = reference.vision_model.embeddings.position_embedding.weight.detach().numpy()
  from flip_jax.models.vit import resample_pos_emb
  np.testing.assert_allclose(pos, resample_pos_emb(hf_pos, 64, 1), atol=1e-6)
  assert teacher_targets(trainer, state, obj, np.zeros((2, 32, 32, 3))).shape == (2, 64, 48)


# ------------------------------------------------------------------ step, validation

def test_validation_loss_uses_the_alternate_mask(flip_teacher):
  path, _ = flip_teacher
  trainer, state, obj = model_and_objective(tiny_eva_config(path))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 32, 32, 3)), jnp.float32)
  board = masking.alternate_mask(4, 16)

  @jax.jit
  def run(state, x):
    model = trainer.model(state)
    want = eva.masked_cosine_loss(model.predict(x, board), obj.teacher_features(model, x),
                                  board)
    return (obj.validation_loss(model, {"image": x}), want,
            obj.loss(model, {"image": x}, jax.random.key(0), 0),
            obj.image_features(model, x))

  (loss, metrics), want, (train_loss, m), features = run(state, x)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(metrics["masked_patches"]) == 8 and float(m["masked_patches"]) <= 6
  assert train_loss != loss and features.shape == (4, 32)
  np.testing.assert_array_equal(loss, run(state, x)[0][0])


def test_benchmark_reports_the_teacher_share(monkeypatch):
  monkeypatch.setattr(benchmark, "device_peak", lambda: (1e12, "test", "cpu"))
  c = tiny_eva_config("random:clip_tiny")
  rows = benchmark.run(c, ["0", "0.5"], batch=8, steps=1)
  assert len(rows) == 1  # EVA's cost does not depend on mask_ratio: one setting
  row = rows[0]
  assert 0 < row["teacher_s"] and 0 < row["teacher_share"] < 2
  obj = objectives.get(c)
  # student 3 x (blocks on 17 tokens + patch embed + head) + teacher 1 x (3 blocks + proj)
  student = 2 * (16 + 1) * (4 * 32 * 32 + 2 * 32 * 64) * 2 + 2 * 2 * 17 ** 2 * 32 * 2
  student += 2 * 16 * 8 * 8 * 3 * 32 + 2 * 16 * 32 * 64
  teacher = 3 * (2 * 17 * (4 * 64 * 64 + 2 * 64 * 256) + 2 * 2 * 17 ** 2 * 64)
  teacher += 2 * 16 * 8 * 8 * 3 * 64 + 2 * 16 * 64 * 64
  assert obj.flops_per_sample() == 3 * student + teacher


# ------------------------------------------------------------------ bad input

def write_json(path, name, content):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, name), "w") as f:
    json.dump(content, f)
  return str(path)


def test_bad_teachers_fail_before_compiling(tmp_path, monkeypatch):
  resnet = write_json(tmp_path / "rn50", "open_clip_config.json", {"model_cfg": {
      "embed_dim": 1024, "vision_cfg": {"layers": [3, 4, 6, 3]}, "text_cfg": {}}})
  bert = write_json(tmp_path / "bert", "config.json", {"model_type": "bert"})
  text_only = write_json(tmp_path / "ours", "config.json", {"model": {"type": "text_only"}})
  os.makedirs(tmp_path / "ours" / "checkpoints" / "1" / "state")
  cases = [
      ("", r"config.teacher.path: no path given \(a FLIP workdir"),
      (str(tmp_path / "missing"), "config.teacher.path: .*missing: no such file or directory"),
      (resnet, "config.teacher.path: .*vision_cfg.layers=.*a ModifiedResNet, not a ViT"),
      (bert, "config.teacher.path: .*model_type 'bert' is not CLIP"),
      (text_only, "config.teacher.path: .* holds a 'text_only' model, not a CLIP image tower"),
      ("random:clip_xxl", "config.teacher.path: random:clip_xxl: unknown preset"),
  ]
  compiled = []
  monkeypatch.setattr(train.Trainer, "__init__", lambda *a, **k: compiled.append(1))
  for path, message in cases:
    with pytest.raises(config_check.ConfigError, match=message):
      train.run(tiny_eva_config(path), str(tmp_path / "run"))
  assert not compiled


@pytest.mark.parametrize("key,value,message", [
    ("teacher.layer", 0, "config.teacher.layer: 0 is not a block of the 3-block teacher"),
    ("teacher.layer", -4, "config.teacher.layer"),
    ("mask.num_masked", 17, r"config.mask: num_masked must be in \[1, 16\]"),
    ("mask.min_aspect", 0.0, "config.mask: need 0 < min_aspect"),
    ("model.image.mask_token", False, "config.model.image.mask_token"),
    ("model.image.pool", "map", "config.model.image.pool"),
    ("model.embed_dim", 64, "config.model.embed_dim: must be 0"),
    ("mask_ratio", 0.5, "config.mask_ratio: EVA masks config.mask.num_masked"),
    ("data.format", "image_text", "config.data.format: EVA trains on 'image'"),
])
def test_bad_values_name_their_key(key, value, message):
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(tiny_eva_config("random:clip_tiny", **{key: value}), 8)


def test_paper_recipes():
  g = load_config("eva_g14")
  assert g.model.image.variant == "g/14" and g.image_size == 224 and g.batch_size == 4096
  assert (g.mask.num_masked, g.mask.min_block, g.mask.min_aspect) == (105, 16, 0.3)
  o = g.optim
  assert np.isclose(o.lr_per_256 * g.batch_size / 256, 1e-3)
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip) == (0.9, 0.98, 1e-6, 0.05, 3.0)
  assert np.isclose(o.end_lr_ratio * 1e-3, 1e-5) and g.model.image.drop_path == 0.1
  assert tuple(g.data.rrc_area) == (0.2, 1.0) and g.teacher.layer == -1
  assert not g.teacher.resample and load_config("eva_b16").teacher.resample
  for name in ("eva_g14", "eva_l14", "eva_b16"):
    c = load_config(name)
    c.teacher.path = "random:clip_l14"
    config_check.validate(c, 8)
    assert round(objectives.get(c).grid ** 2 * 105 / 256) == c.mask.num_masked
