"""Configs: every shipped config validates; bad values fail early, naming their key."""
import glob
import os

import jax
import ml_collections
import pytest

from flip_jax import config_base, config_check, train
from helpers import ROOT, load_config, tiny_flip_config

CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
  c = load_config(name)
  if c.objective == "eva":  # the teacher checkpoint is the user's: a random stand-in
    c.teacher.path = "random:clip_tiny" if name == "eva_debug" else "random:clip_l14"
  config_check.validate(c, num_devices=8 if c.batch_size % 8 == 0 else 1)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_every_key_of_config_base(name):
  """One home for every key: a config has exactly base_config's keys (a recipe sets values,
  never adds a section), so `--config.extrema.num_masks=8` is a valid override anywhere."""
  def keys(c, prefix=""):
    out = set()
    for k, v in c.items():
      if k == "evals":  # name -> evaluator: entries are the config's own
        continue
      out |= keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {prefix + k}
    return out
  assert keys(load_config(name)) == keys(config_base.base_config())


def test_a_method_section_can_be_overridden_on_another_methods_config():
  c = load_config("flip_debug")
  c.update_from_flattened_dict({"extrema.num_masks": 8, "teacher.layer": -2,
                                "simmim.mask_patch": 16, "classify.layer_decay": 0.5})
  assert (c.extrema.num_masks, c.teacher.layer, c.simmim.mask_patch) == (8, -2, 16)
  config_check.validate(c, num_devices=1)  # FLIP reads none of them


def test_flip_recipes():
  l16 = load_config("flip_l16")
  assert (l16.batch_size, l16.mask_ratio, l16.text_len) == (65536, 0.5, 32)
  assert l16.total_samples == 10_000 * 1_281_167
  assert (l16.optim.b2, l16.optim.weight_decay, l16.optim.lr_per_256) == (0.95, 0.2, 4e-6)
  assert l16.model.embed_dim == 768 and not l16.model.text.causal
  assert l16.model.image.act == l16.model.text.act == "gelu_tanh"  # flax nn.gelu's default
  assert load_config("flip_b16").model.embed_dim == 512
  assert load_config("flip_h14").model.text.depth == 24
  tune = load_config("flip_l16", "unmasked")
  assert tune.mask_ratio == 0.0 and tune.optim.lr_per_256 == 4e-8
  with pytest.raises(ValueError, match="unmasked"):
    load_config("flip_l16", "bogus")


@pytest.mark.parametrize("key,value,message", [
    ("mask_ratio", 1.0, "config.mask_ratio"),
    ("mask_ratio", -0.5, "config.mask_ratio"),
    ("model.image.variant", "XL/16", "config.model.image.variant"),
    ("batch_size", 12, "config.batch_size: 12 is not divisible by the data-parallel size 8"),
    ("text_len", 0, "config.text_len"),
    ("objective", "nope", "config.objective"),
    ("dtype", "float64", "config.dtype"),
    ("optim.schedule", "linear", "config.optim.schedule"),
    ("max_nonfinite_steps", 0, "config.max_nonfinite_steps"),
    ("data.max_image_pixels", 0, "config.data.max_image_pixels"),
])
def test_bad_values_name_their_key(key, value, message):
  c = tiny_flip_config(**{key: value})
  with pytest.raises(config_check.ConfigError, match=message.replace("(", r"\(")):
    config_check.validate(c, num_devices=8)


def test_all_errors_reported_together_before_compiling(tmp_path, monkeypatch):
  c = tiny_flip_config(mask_ratio=2.0, text_len=0)
  compiled = []
  monkeypatch.setattr(train.Trainer, "__init__", lambda *a, **k: compiled.append(1))
  with pytest.raises(config_check.ConfigError) as err:
    train.run(c, str(tmp_path))
  assert "config.mask_ratio" in str(err.value) and "config.text_len" in str(err.value)
  assert not compiled and jax.device_count() == 8


def test_reliability_keys_are_gathered_with_the_rest():
  c = tiny_flip_config(batch_size=24, max_nonfinite_steps=0, mask_ratio=2.0)
  c.data.max_image_pixels = -1
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(c, num_devices=8, num_processes=16)
  message = str(err.value)
  for key in ("config.batch_size: 24 is not divisible by the 16 processes",
              "config.max_nonfinite_steps", "config.data.max_image_pixels",
              "config.mask_ratio"):
    assert key in message


POD_CONFIGS = [n for n in CONFIGS if not n.endswith("_debug")]


@pytest.mark.parametrize("name", POD_CONFIGS)
def test_pod_configs_scan_their_towers(name):
  """Every pod config runs its towers' blocks under scan (one compiled block per tower),
  with a remat policy the model knows; the debug configs may stay unrolled."""
  from flip_jax.models import layers
  c = load_config(name)
  if c.objective == "flip":
    towers = ("image", "text")
  else:
    towers = ("swin",) if c.model.encoder == "swinv2" else ("image",)
  for tower in towers:
    assert c.model[tower].scan, (name, tower)
    assert c.model[tower].remat in layers.REMAT_POLICIES, (name, tower)
