"""Weight import/export (Hugging Face CLIP, open_clip, Orbax) and the inference API.

PyTorch (transformers' CLIPModel) is the reference. open_clip is checked by its file
format (exact state-dict keys and shapes) and a round trip through our importer: the
open_clip package itself cannot be installed beside CPU torch here (it needs
torchvision, which has no CPU build; its ops fail to register and break transformers).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from flip_jax import config_io, export, inference, sharding, train, trees
from flip_jax.convert import convert
from flip_jax.data import transforms
from flip_jax.interop import ours
from flip_jax.interop.rules import ConversionError
from flip_jax.models import from_config
from helpers import ROOT, tiny_flip_config

VOCAB, BOS, EOS, TEXT_LEN = 99, 97, 98, 16


def hf_configs(eos_token_id=EOS):
  text = transformers.CLIPTextConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=TEXT_LEN, bos_token_id=BOS,
      eos_token_id=eos_token_id, pad_token_id=0)
  vision = transformers.CLIPVisionConfig(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, projection_dim=48)
  return text, vision


def perturbed(model):
  """transformers initialises biases to 0 and LayerNorms to 1: randomise every weight so
  that a wrong mapping of any of them shows."""
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def images_and_ids(seed=0, n_images=3, n_texts=4):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
  ids = rng.integers(1, BOS, (n_texts, TEXT_LEN))
  ids[:, 0] = BOS
  ids[np.arange(n_texts), rng.integers(2, TEXT_LEN, n_texts)] = EOS  # EOS, then "padding"
  return images, ids


def pixels(images, config):
  """What inference feeds the model, as a PyTorch NCHW batch."""
  x = transforms.normalize(images, config.data.mean, config.data.std)
  return torch.tensor(x).permute(0, 3, 1, 2)


def state_dicts_equal(a, b):
  a, b = a.state_dict(), b.state_dict()
  assert set(a) == set(b)
  for k in a:
    torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------ Hugging Face

@pytest.mark.parametrize("eos_token_id", [EOS, 2])  # 2: transformers pools at argmax(ids)
def test_hf_clip_import_matches_pytorch_and_exports_back(tmp_path, eos_token_id):
  text, vision = hf_configs(eos_token_id)
  config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                   projection_dim=48)
  reference = perturbed(transformers.CLIPModel(config))
  reference.save_pretrained(tmp_path / "hf")
  model = inference.load(convert("hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")))

  images, ids = images_and_ids()
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), pixel_values=pixels(images, model.config))
  zi, zt = model.encode_image(images), model.encode_text(ids)
  np.testing.assert_allclose(zi, out.image_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(zt, out.text_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(model.logit_scale * zi @ zt.T, out.logits_per_image.numpy(),
                             atol=1e-5)

  export.export(str(tmp_path / "ckpt"), "hf", str(tmp_path / "back"))
  back = transformers.CLIPModel.from_pretrained(tmp_path / "back").eval()
  state_dicts_equal(back, reference)
  assert back.config.text_config.eos_token_id == eos_token_id
  with torch.no_grad():
    again = back(input_ids=torch.tensor(ids), pixel_values=pixels(images, model.config))
  torch.testing.assert_close(again.logits_per_image, out.logits_per_image, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [transformers.CLIPVisionModelWithProjection,
                                 transformers.CLIPVisionModel])
def test_hf_vision_only_round_trip(tmp_path, cls):
  _, vision = hf_configs()
  reference = perturbed(cls(vision))
  reference.save_pretrained(tmp_path / "hf")
  model = inference.load(convert("hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")))
  assert model.config.model.type == "image_tower" and not model.has_text

  images, _ = images_and_ids()
  with torch.no_grad():
    out = reference(pixel_values=pixels(images, model.config))
    body = getattr(reference, "vision_model", reference)
    patches = body.post_layernorm(out.last_hidden_state[:, 1:])
    if cls is transformers.CLIPVisionModelWithProjection:
      patches, pooled = reference.visual_projection(patches), out.image_embeds
    else:
      pooled = out.pooler_output
  np.testing.assert_allclose(model.encode_patches(images), patches.numpy(), atol=1e-5)
  pooled = pooled.numpy() / np.linalg.norm(pooled.numpy(), axis=-1, keepdims=True)
  np.testing.assert_allclose(model.encode_image(images), pooled, atol=1e-5)
  with pytest.raises(ValueError, match="no text tower"):
    model.encode_text([[1, 2]])

  export.export(str(tmp_path / "ckpt"), "hf", str(tmp_path / "back"))
  state_dicts_equal(cls.from_pretrained(tmp_path / "back"), reference)


# ------------------------------------------------------------------ training checkpoints

def test_training_checkpoint_orbax_export_and_inference(tmp_path):
  c = tiny_flip_config()
  c.total_samples = 16 * 2
  workdir = str(tmp_path / "run")
  state = train.run(c, workdir)["state"]
  c = config_io.read(workdir)  # the run's resolved config: the text tower sized to its vocab
  trainer = train.Trainer(c, sharding.make_mesh({"data": -1}))
  net = trainer.model(jax.device_get(state))

  exported = export.export(workdir, "orbax", str(tmp_path / "exported"))
  assert sorted(os.listdir(exported)) == ["checkpoints", "config.json", "tokenizer.json"]
  step_dir = os.path.join(exported, "checkpoints", "2", "state")
  meta = ocp.PyTreeCheckpointer().metadata(step_dir).item_metadata.tree
  assert set(meta) == {"params"}  # no optimizer state, no step counter

  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  captions = ["seven", "a handwritten digit three", "zero"]
  for path in (exported, workdir):
    model = inference.load(path)
    ids = model.tokenize(captions)
    want_image = net.encode_image(transforms.normalize(images, c.data.mean, c.data.std))
    np.testing.assert_allclose(model.encode_image(images), want_image, atol=1e-5)
    np.testing.assert_allclose(model.encode_text(captions), net.encode_text(ids), atol=1e-5)
    np.testing.assert_allclose(model.logit_scale, net.scale(), rtol=1e-6)
  # a larger image is resized and centre-cropped like evaluation does
  big = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
  views = np.stack([transforms.resize_center_crop(im, 32) for im in big])
  np.testing.assert_allclose(model.encode_image(big), model.encode_image(views), atol=1e-6)

  # fine-tuning reads the exported dir like a workdir
  params = train.load_init_params(trainer, exported)
  want = trees.flatten(jax.device_get(state["params"]))
  for name, value in trees.flatten(params).items():
    np.testing.assert_array_equal(value, want[name])


def random_exported(path, config, seed=0):
  """An exported dir of the model `config` describes, with every param randomised."""
  net = from_config.build(config, rngs=nnx.Rngs(seed), dtype=np.float32)
  rng = np.random.default_rng(seed)
  params = {k: np.asarray(v) + rng.normal(0, 0.05, np.shape(v)).astype(np.float32)
            for k, v in trees.flatten(nnx.to_pure_dict(nnx.state(net, nnx.Param))).items()}
  return ours.write_exported(str(path), params=params, config=config)


def clip_like_flip_config():
  """FLIP's ViT (sin-cos positions, patch bias, no ln_pre, eps 1e-6, GELU), CLS pooling,
  and a causal text tower pooled at EOS: what HF and open_clip can both express."""
  c = tiny_flip_config()
  c.model.image.update(pool="cls", ln_pre=True)
  c.model.text.update(causal=True, pool="last", eos_id=63)
  c.tokenizer = ""
  return c


@pytest.mark.parametrize("scan", [False, True])
def test_flip_vit_layout_exports_to_hf_exactly(tmp_path, scan):
  c = clip_like_flip_config()
  c.model.image.scan = c.model.text.scan = scan  # one params layout: export never knows
  model = inference.load(random_exported(tmp_path / "ours", c))
  export.export(str(tmp_path / "ours"), "hf", str(tmp_path / "hf"))
  reference = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  ids = np.random.default_rng(1).integers(1, 60, (4, c.text_len))
  ids[:, -2] = 63
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), pixel_values=pixels(images, c))
  np.testing.assert_allclose(model.encode_image(images), out.image_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(model.encode_text(ids), out.text_embeds.numpy(), atol=1e-5)


@pytest.mark.parametrize("fmt,option", [("hf", "model.image.pool='gap'"),
                                        ("open_clip", "model.image.pool='gap'")])
def test_export_refuses_what_the_format_cannot_compute(tmp_path, fmt, option):
  c = tiny_flip_config()  # FLIP: mean over all tokens including CLS
  c.tokenizer = ""
  random_exported(tmp_path / "ours", c)
  with pytest.raises(ConversionError, match=option.replace("(", r"\(")) as err:
    export.export(str(tmp_path / "ours"), fmt, str(tmp_path / "out"))
  assert "\n" not in str(err.value)
  assert not os.path.exists(tmp_path / "out")
  assert os.listdir(tmp_path) == ["ours"]  # no partial directory left behind


def test_open_clip_refuses_a_non_causal_text_tower(tmp_path):
  c = tiny_flip_config()
  c.model.image.pool = "cls"
  c.tokenizer = ""
  random_exported(tmp_path / "ours", c)
  with pytest.raises(ConversionError, match=r"model\.text\.causal=False with "
                     r"text\.padding_mask=True.*padding"):
    export.export(str(tmp_path / "ours"), "open_clip", str(tmp_path / "out"))


def test_open_clip_maps_a_non_causal_tower_without_padding_mask(tmp_path):
  """Official FLIP's text tower (non-causal, no padding mask, pooled first) is open_clip's
  no_causal_mask=True, pool_type='first'."""
  c = tiny_flip_config()
  c.model.image.pool = "cls"
  c.model.text.update(causal=False, padding_mask=False, pool="first")
  c.tokenizer = ""
  model = inference.load(random_exported(tmp_path / "ours", c))
  out = export.export(str(tmp_path / "ours"), "open_clip", str(tmp_path / "oc"))
  with open(os.path.join(out, "open_clip_config.json")) as f:
    text_cfg = json.load(f)["model_cfg"]["text_cfg"]
  assert text_cfg["no_causal_mask"] is True and text_cfg["pool_type"] == "first"
  back = inference.load(convert("open_clip", out, str(tmp_path / "back")))
  ids = np.random.default_rng(1).integers(1, 60, (4, 8))
  ids[:, -3:] = 0  # padding, attended to
  np.testing.assert_allclose(back.encode_text(ids), model.encode_text(ids), atol=1e-5)


# ------------------------------------------------------------------ open_clip

@pytest.mark.parametrize("scan", [False, True])
def test_open_clip_export_files_and_import_round_trip(tmp_path, scan):
  c = clip_like_flip_config()
  c.model.image.scan = c.model.text.scan = scan
  c.model.image.ln_pre = False  # open_clip's no_ln_pre
  model = inference.load(random_exported(tmp_path / "ours", c))
  out = export.export(str(tmp_path / "ours"), "open_clip", str(tmp_path / "oc"))
  assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors"]
  with open(os.path.join(out, "open_clip_config.json")) as f:
    cfg = json.load(f)
  assert cfg["model_cfg"] == {
      "embed_dim": 32, "quick_gelu": False, "init_logit_scale": pytest.approx(
          float(np.log(model.logit_scale)), rel=1e-6),
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                     "mlp_ratio": 2.0, "patch_size": 8, "no_ln_pre": True, "pool_type": "tok",
                     "norm_kwargs": {"eps": 1e-6}},
      "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                   "layers": 2, "mlp_ratio": 2.0, "pad_id": 0, "no_causal_mask": False,
                   "norm_kwargs": {"eps": 1e-6}, "pool_type": "eos", "eos_id": 63}}
  state = load_file(os.path.join(out, "open_clip_model.safetensors"))
  block = {"ln_1.weight": (32,), "ln_1.bias": (32,), "attn.in_proj_weight": (96, 32),
           "attn.in_proj_bias": (96,), "attn.out_proj.weight": (32, 32),
           "attn.out_proj.bias": (32,), "ln_2.weight": (32,), "ln_2.bias": (32,),
           "mlp.c_fc.weight": (64, 32), "mlp.c_fc.bias": (64,),
           "mlp.c_proj.weight": (32, 64), "mlp.c_proj.bias": (32,)}
  want = {"visual.class_embedding": (32,), "visual.conv1.weight": (32, 3, 8, 8),
          "visual.positional_embedding": (17, 32), "visual.ln_post.weight": (32,),
          "visual.ln_post.bias": (32,), "visual.proj": (32, 32),
          "token_embedding.weight": (64, 32), "positional_embedding": (8, 32),
          "ln_final.weight": (32,), "ln_final.bias": (32,), "text_projection": (32, 32),
          "logit_scale": ()}
  for i in range(2):
    for k, shape in block.items():
      want[f"visual.transformer.resblocks.{i}.{k}"] = shape
      want[f"transformer.resblocks.{i}.{k}"] = shape
  assert {k: v.shape for k, v in state.items()} == want

  back = inference.load(convert("open_clip", out, str(tmp_path / "back")))
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  ids = np.random.default_rng(1).integers(1, 60, (4, 8))
  ids[:, -1] = 63
  np.testing.assert_allclose(back.encode_image(images), model.encode_image(images), atol=1e-5)
  np.testing.assert_allclose(back.encode_text(ids), model.encode_text(ids), atol=1e-5)


# ------------------------------------------------------------------ bad input

@pytest.fixture
def hf_dir(tmp_path):
  _, vision = hf_configs()
  transformers.CLIPVisionModelWithProjection(vision).save_pretrained(tmp_path / "hf")
  return tmp_path / "hf"


def convert_error(src, out):
  with pytest.raises(ConversionError) as err:
    convert("hf", str(src), str(out))
  assert "\n" not in str(err.value)
  assert not os.path.exists(out)
  return str(err.value)


def test_bad_hf_inputs_name_the_file_and_key(hf_dir, tmp_path):
  out = tmp_path / "out"
  weights = load_file(hf_dir / "model.safetensors")

  os.remove(hf_dir / "model.safetensors")
  msg = convert_error(hf_dir, out)
  assert str(hf_dir) in msg and "*.safetensors" in msg

  key = "vision_model.encoder.layers.1.mlp.fc1.weight"
  save_file({**weights, key: weights[key][:, :32].copy()}, hf_dir / "model.safetensors")
  msg = convert_error(hf_dir, out)
  assert "model.safetensors" in msg and key in msg and "(128, 32)" in msg

  save_file({k: v for k, v in weights.items() if k != key}, hf_dir / "model.safetensors")
  assert "missing key" in convert_error(hf_dir, out)

  save_file(weights, hf_dir / "model.safetensors")
  with open(hf_dir / "config.json") as f:
    cfg = json.load(f)
  with open(hf_dir / "config.json", "w") as f:
    json.dump({**cfg, "model_type": "siglip_vision_model"}, f)
  msg = convert_error(hf_dir, out)
  assert "config.json" in msg and "model_type 'siglip_vision_model'" in msg


def test_convert_cli_fails_in_one_line_and_writes_nothing(hf_dir, tmp_path):
  os.remove(hf_dir / "model.safetensors")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "flip_jax.convert", "--from=hf", f"--src={hf_dir}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f"error: {hf_dir}: no *.safetensors weights (pickled .bin/.pt files are not read)"]
  assert not os.path.exists(out)


def test_inference_rejects_a_checkpoint_of_another_shape(tmp_path):
  c = tiny_flip_config()
  c.tokenizer = ""
  random_exported(tmp_path / "ours", c)
  c.model.image.width = 64
  config_io.write(c, str(tmp_path / "ours"))
  with pytest.raises(ConversionError, match=r"param 'image/cls_token' has shape \(32,\)"):
    inference.load(str(tmp_path / "ours"))
