"""The recipes against the official code: FLIP's tokenizer and text tower, each method's
weight-decay exemptions, the FLIP and EVA initialisations."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx
from scipy import stats

from flip_jax import objectives, optim, trees
from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.models import from_config, inits
from flip_jax.models import text as text_lib
from flip_jax.models import vit
from flip_jax.recipes import eva as eva_recipe
from flip_jax.recipes import extrema as extrema_recipe
from flip_jax.recipes import flip as flip_recipe


def shrink(c):
  c.image_size = 32
  c.model.image.update(variant="custom/8", width=32, depth=2, heads=2, mlp_dim=64)
  c.model.text.update(width=32, depth=2, heads=2, mlp_dim=64, vocab_size=64)
  c.dtype = "float32"
  return c


def decay_table(c, model):
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  names = jax.tree.leaves(trees.names(params))
  return dict(zip(names, jax.tree.leaves(optim.decay_mask(c, params))))


# ------------------------------------------------------------------ FLIP text


def test_flip_recipe_tokenizer_adds_no_special_tokens():
  """tf_text's BertTokenizer.tokenize + pad_model_inputs: word pieces, then 0s."""
  c = flip_recipe.laion_config()
  assert not c.model.text.special_tokens and not c.model.text.padding_mask
  built = tokenizer_lib.build_digits_wordpiece()
  ours = tokenizer_lib.TextTokenizer(tokenizers.Tokenizer.from_str(built.to_str()), 8,
                                     special_tokens=c.model.text.special_tokens)
  pieces = built.encode("a photo of the digit five", add_special_tokens=False).ids
  assert len(pieces) == 6
  np.testing.assert_array_equal(ours.encode(["a photo of the digit five"])[0],
                                pieces + [built.token_to_id("[PAD]")] * 2)
  assert built.token_to_id("[PAD]") == 0 and c.model.text.pad_id == 0
  long = "a handwritten nine " * 4
  np.testing.assert_array_equal(ours.encode([long])[0],
                                built.encode(long, add_special_tokens=False).ids[:8])
  # The exported tokenizer.json reproduces these ids; the default keeps [CLS] ... [SEP].
  again = tokenizer_lib.TextTokenizer(tokenizers.Tokenizer.from_str(ours.to_str()), 8)
  np.testing.assert_array_equal(again.encode(["a handwritten nine"]),
                                ours.encode(["a handwritten nine"]))
  default = tokenizer_lib.TextTokenizer(tokenizers.Tokenizer.from_str(built.to_str()), 8)
  ids = default.encode(["a photo of the digit five"])[0]
  assert ids[0] == built.token_to_id("[CLS]") and ids[7] == built.token_to_id("[SEP]")


def test_flip_text_tower_pools_position_0_and_attends_to_padding():
  args = dict(vocab_size=50, max_len=8, width=32, depth=2, heads=2, mlp_dim=64, causal=False,
              pool="first", rngs=nnx.Rngs(0))
  official = text_lib.TextTransformer(padding_mask=False, **args)
  masked = text_lib.TextTransformer(padding_mask=True, **args)
  tokens = jnp.array([[7, 5, 9, 0, 0, 0, 0, 0]])
  out = official(tokens)
  np.testing.assert_array_equal(out["pooled"], out["tokens"][:, 0])
  # Without the padding mask the first token attends to the pads (their positions differ).
  nopad = tokens[:, :3]
  assert not np.allclose(official(nopad)["pooled"], out["pooled"], atol=1e-4)
  np.testing.assert_allclose(masked(nopad)["pooled"], masked(tokens)["pooled"], atol=1e-5)


def test_flip_config_keys_reach_the_model_not_the_tokenizer_key():
  c = shrink(flip_recipe.laion_config())
  model = objectives.get(c).build(nnx.Rngs(0))
  assert model.text.padding_mask is False
  assert "special_tokens" not in from_config.text_kwargs(c)


# ------------------------------------------------------------------ weight decay


def test_flip_recipe_decays_all_but_biases_norms_and_positions():
  """t5x/train_state_initializer.py: filter_bias_and_norm and filter_posembed only."""
  c = shrink(flip_recipe.laion_config())
  c.model.image.pos_emb = "learned"
  table = decay_table(c, objectives.get(c).build(nnx.Rngs(0)))
  for name, decayed in table.items():
    exempt = name.endswith("/bias") or name.endswith("/scale") or name.endswith("pos_emb")
    assert decayed == (not exempt), name
  assert table["image/cls_token"] and table["logit_scale"] and table["text/token_emb"]
  assert not table["text/pos_emb"] and not table["image/pos_emb"]


def test_eva_recipe_decays_the_mask_token():
  """optim_factory.get_parameter_groups: 1-D, *.bias and no_weight_decay() exempt; EVA's
  mask token is [1, 1, D], so decayed."""
  c = shrink(eva_recipe.eva_base())
  model = from_config.build(c, rngs=nnx.Rngs(0), dtype=jnp.float32)
  table = decay_table(c, model)
  assert table["image/mask_token"] and table["image/encoder/blocks/0/attn/q/kernel"]
  for name in ("image/cls_token", "image/pos_emb", "image/ln_post/scale",
               "image/encoder/blocks/1/mlp/fc2/bias"):
    assert not table[name], name


def test_extrema_recipe_exempts_1d_params_and_tokens():
  """timm add_weight_decay: 1-D params, biases and {pos_embed, cls_token} exempt."""
  c = shrink(extrema_recipe.apply(extrema_recipe.base_config()))
  c.mask_ratio = 0.75
  c.extrema.update(num_masks=2, proj_hidden=32, proj_dim=16, pred_hidden=32)
  table = decay_table(c, objectives.get(c).build(nnx.Rngs(0)))
  for name, decayed in table.items():
    leaf = name.split("/")[-1]
    one_d = leaf in ("bias", "scale", "cls_token") or leaf.startswith("layer_scale")
    assert decayed == (not one_d), name
  assert "student/pool/cls_token" in table


# ------------------------------------------------------------------ initialisation

TRUNC_1SD = math.sqrt(stats.truncnorm(-1, 1).var())  # std of N(0, 1) cut at +-1: 0.5396


def test_eva_init_is_trunc_normal_with_depth_rescaling():
  depth, std = 4, 0.02
  model = vit.VisionTransformer(image_size=32, variant="custom/4", width=64, depth=depth,
                                heads=4, mlp_dim=256, pos_emb="learned", mask_token=True,
                                init="beit", init_std=std, rngs=nnx.Rngs(0))
  blocks = model.encoder.blocks
  for i, block in enumerate(blocks):
    for kernel, scale in ((block.attn.q.kernel, 1.0), (block.mlp.fc1.kernel, 1.0),
                          (block.attn.out.kernel, 1 / math.sqrt(2 * (i + 1))),
                          (block.mlp.fc2.kernel, 1 / math.sqrt(2 * (i + 1)))):
      w = np.asarray(kernel[...])
      assert np.abs(w).max() <= std * scale * (1 + 1e-6)
      np.testing.assert_allclose(w.std(), std * scale * TRUNC_1SD, rtol=0.06)
      assert abs(w.mean()) < 0.1 * std * scale
  for token in (model.cls_token, model.mask_token, model.pos_emb, model.patch_embed.kernel):
    w = np.asarray(token[...])
    assert np.abs(w).max() <= std * (1 + 1e-6)
  np.testing.assert_allclose(np.asarray(model.pos_emb[...]).std(), std * TRUNC_1SD, rtol=0.06)
  # Block 3's output kernels are sqrt(8)/sqrt(2) = 2x smaller than block 0's.
  ratio = (np.asarray(blocks[0].attn.out.kernel[...]).std()
           / np.asarray(blocks[3].attn.out.kernel[...]).std())
  np.testing.assert_allclose(ratio, 2.0, rtol=0.08)


def test_flip_init_matches_the_official_initialisers():
  width, patch = 64, 8
  model = vit.VisionTransformer(image_size=32, variant=f"custom/{patch}", width=width, depth=2,
                                heads=4, mlp_dim=256, init="flip", rngs=nnx.Rngs(0))
  block = model.encoder.blocks[0]
  q = np.asarray(block.attn.q.kernel[...])
  # variance_scaling(0.5, 'fan_avg', 'uniform') on [D, D]: U(-a, a) with a = sqrt(1.5 / D)
  bound = math.sqrt(3 * 0.5 / width)
  assert np.abs(q).max() <= bound and np.abs(q).max() > 0.95 * bound
  out = np.asarray(block.attn.out.kernel[...])  # xavier-uniform on [D, D]
  assert np.abs(out).max() <= math.sqrt(6 / (2 * width)) and np.abs(out).max() > 0.95 * bound
  patch_kernel = np.asarray(model.patch_embed.kernel[...])  # xavier on [p*p*3, D]
  limit = math.sqrt(6 / (patch * patch * 3 + width))
  assert np.abs(patch_kernel).max() <= limit and np.abs(patch_kernel).max() > 0.95 * limit
  np.testing.assert_allclose(np.asarray(model.cls_token[...]).std(), 0.02, rtol=0.3)
  text = text_lib.TextTransformer(vocab_size=64, max_len=32, width=64, depth=1, heads=4,
                                  mlp_dim=128, init="flip", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(text.pos_emb[...]).std(), 0.02, rtol=0.1)


def test_unknown_init_scheme_is_refused_by_key():
  from flip_jax import config_check
  c = shrink(flip_recipe.laion_config())
  c.model.image.init = "kaiming"
  with pytest.raises(config_check.ConfigError, match=r"config.model.image.init: 'kaiming'"):
    config_check.validate(c, num_devices=1)
  with pytest.raises(ValueError, match="init must be one of"):
    inits.scheme("kaiming")
