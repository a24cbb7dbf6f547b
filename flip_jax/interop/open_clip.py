"""open_clip (its Hugging Face hub layout) <-> our params and config.

A directory holds `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...})
and `open_clip_model.safetensors`; `open_clip.create_model('local-dir:DIR')` loads it.
Only open_clip's own ViT and text transformer are mapped (no timm or HF towers). Facts
from open_clip 3.3 (`transformer.py`, `model.py`) that decide what is representable:

- every ViT has a class token; pool_type 'tok' takes it, 'avg' averages the patch tokens
  *without* it, so our pool='gap' (mean over all tokens, CLS included) has no equivalent;
- LayerNorm eps and the activation come from `norm_kwargs` / `quick_gelu` / `act_kwargs`;
- `no_causal_mask=True` attends to every token, padding included: our non-causal tower
  with `padding_mask=False` (official FLIP's); a padding mask (`use_pad_mask`) is not
  reachable from the model config, so export refuses a non-causal tower that masks padding;
- text pool_type 'argmax' = our pool='last' with eos_id=-1, 'eos' = pool='last' with
  eos_id, 'first' = pool='first'.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from safetensors.numpy import load_file, save_file

from flip_jax.config_base import base_config
from flip_jax.interop import rules as R
from flip_jax.interop.hf_clip import read_json
from flip_jax.interop.rules import ConversionError
from flip_jax.models.from_config import NO_EOS_ID, image_dims

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TORCH_LN_EPS = 1e-5  # open_clip's LayerNorm is torch's, eps 1e-5 unless norm_kwargs says
# Options of open_clip's configs that change the computation and have no equivalent here.
UNSUPPORTED_VISION = ("timm_model_name", "attentional_pool", "ls_init_value", "block_type",
                      "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                      "scale_attn", "scale_fc")
UNSUPPORTED_TEXT = ("hf_model_name", "embed_cls", "ls_init_value", "proj_bias", "block_type",
                    "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                    "scale_attn", "scale_fc")


# ------------------------------------------------------------------ rules

def resblock_rules(ours: str, theirs: str, depth: int) -> list[R.Rule]:
  out = []
  for i in range(depth):
    o, t = f"{ours}/encoder/blocks/{i}", f"{theirs}transformer.resblocks.{i}"
    qkv = tuple(f"{o}/attn/{n}" for n in ("q", "k", "v"))
    for ln, oc_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
      out += [R.copy(f"{o}/{ln}/scale", f"{t}.{oc_ln}.weight"),
              R.copy(f"{o}/{ln}/bias", f"{t}.{oc_ln}.bias")]
    out += [R.packed_linear(tuple(f"{n}/kernel" for n in qkv), f"{t}.attn.in_proj_weight"),
            R.packed_bias(tuple(f"{n}/bias" for n in qkv), f"{t}.attn.in_proj_bias"),
            R.linear(f"{o}/attn/out/kernel", f"{t}.attn.out_proj.weight", n_in=2),
            R.bias(f"{o}/attn/out/bias", f"{t}.attn.out_proj.bias")]
    for fc, oc_fc in (("fc1", "c_fc"), ("fc2", "c_proj")):
      out += [R.linear(f"{o}/mlp/{fc}/kernel", f"{t}.mlp.{oc_fc}.weight"),
              R.bias(f"{o}/mlp/{fc}/bias", f"{t}.mlp.{oc_fc}.bias")]
  return out


def model_rules(config: ml_collections.ConfigDict) -> list[R.Rule]:
  i, t = config.model.image, config.model.text
  out = [R.copy("image/cls_token", "visual.class_embedding"),
         R.conv_patch("image/patch_embed/kernel", "visual.conv1.weight"),
         R.copy("image/pos_emb", "visual.positional_embedding")]
  if i.ln_pre:
    out += [R.copy("image/ln_pre/scale", "visual.ln_pre.weight"),
            R.copy("image/ln_pre/bias", "visual.ln_pre.bias")]
  out += resblock_rules("image", "visual.", image_dims(config).depth)
  out += [R.copy("image/ln_post/scale", "visual.ln_post.weight"),
          R.copy("image/ln_post/bias", "visual.ln_post.bias"),
          R.copy("image_proj/kernel", "visual.proj"),  # pooled @ proj: [width, embed]
          R.copy("text/token_emb", "token_embedding.weight"),
          R.copy("text/pos_emb", "positional_embedding"),
          *resblock_rules("text", "", t.depth),
          R.copy("text/ln_final/scale", "ln_final.weight"),
          R.copy("text/ln_final/bias", "ln_final.bias"),
          R.copy("text_proj/kernel", "text_projection"),
          R.copy("logit_scale", "logit_scale")]
  return out


# ------------------------------------------------------------------ import

def _acts(cfg: dict, tower: str, quick_gelu: bool, source: str) -> str:
  kwargs = cfg.get("act_kwargs") or {}
  if quick_gelu:
    if kwargs:
      raise ConversionError(f"{source}: {tower}.act_kwargs with quick_gelu is not supported")
    return "quick_gelu"
  if kwargs in ({}, {"approximate": "none"}):
    return "gelu"
  if kwargs == {"approximate": "tanh"}:
    return "gelu_tanh"
  raise ConversionError(f"{source}: {tower}.act_kwargs={kwargs} is not supported")


def _eps(cfg: dict, tower: str, source: str) -> float:
  kwargs = cfg.get("norm_kwargs") or {}
  if set(kwargs) - {"eps"}:
    raise ConversionError(f"{source}: {tower}.norm_kwargs={kwargs}: only 'eps' is supported")
  return float(kwargs.get("eps", TORCH_LN_EPS))


def _mlp_dim(width: int, ratio: float) -> int:
  return int(width * ratio)  # open_clip's own rounding


def _square(value, key: str, source: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ConversionError(f"{source}: {key}={value}: only square images and patches")
    return value[0]
  return value


def config_from_open_clip(model_cfg: dict, *, source: str, preprocess: dict | None = None
                          ) -> ml_collections.ConfigDict:
  if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
    raise ConversionError(f"{source}: not an open_clip model config (needs embed_dim, "
                          f"vision_cfg and text_cfg)")
  v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
  for tower, cfg, unsupported in (("vision_cfg", v, UNSUPPORTED_VISION),
                                  ("text_cfg", t, UNSUPPORTED_TEXT)):
    for key in unsupported:
      if cfg.get(key) not in (None, False, 0, "default"):
        raise ConversionError(f"{source}: {tower}.{key}={cfg[key]!r} is not supported")
  if isinstance(v.get("layers", 12), (list, tuple)):
    raise ConversionError(f"{source}: vision_cfg.layers={v['layers']}: a ModifiedResNet, not "
                          f"a ViT")
  if model_cfg.get("init_logit_bias") is not None:
    raise ConversionError(f"{source}: init_logit_bias: a sigmoid-loss (SigLIP) model")
  if t.get("proj_type", "linear") != "linear":
    raise ConversionError(f"{source}: text_cfg.proj_type={t['proj_type']!r} is not supported")
  pool = v.get("pool_type", "tok")
  if pool != "tok":
    raise ConversionError(f"{source}: vision_cfg.pool_type={pool!r}: only 'tok' (CLS) is "
                          f"supported ('avg' leaves the class token out of the mean)")
  size = _square(v.get("image_size", 224), "vision_cfg.image_size", source)
  patch = _square(v.get("patch_size", 16), "vision_cfg.patch_size", source)
  quick = bool(model_cfg.get("quick_gelu", False))
  text_pool = t.get("pool_type", "argmax")
  if text_pool not in ("argmax", "eos", "first"):
    raise ConversionError(f"{source}: text_cfg.pool_type={text_pool!r} is not supported")
  width, twidth = v.get("width", 768), t.get("width", 512)
  non_causal = bool(t.get("no_causal_mask", False))

  c = base_config()
  c.image_size = size
  c.model.type = "two_towers"
  c.model.embed_dim = model_cfg["embed_dim"]
  c.model.image.update(
      variant=f"custom/{patch}", width=width, depth=v.get("layers", 12),
      heads=width // v.get("head_width", 64),
      mlp_dim=_mlp_dim(width, v.get("mlp_ratio", 4.0)), pos_emb="learned", cls_token=True,
      ln_pre=not v.get("no_ln_pre", False), pool="cls", ln_post=True,
      act=_acts(v, "vision_cfg", quick, source), ln_eps=_eps(v, "vision_cfg", source),
      patch_bias=False)
  c.text_len = t.get("context_length", 77)
  c.model.text.update(
      width=twidth, depth=t.get("layers", 12), heads=t.get("heads", 8),
      mlp_dim=_mlp_dim(twidth, t.get("mlp_ratio", 4.0)), vocab_size=t.get("vocab_size", 49408),
      pad_id=t.get("pad_id", 0), causal=not non_causal, padding_mask=not non_causal,
      pool="first" if text_pool == "first" else "last",
      eos_id=t.get("eos_id", 2) if text_pool == "eos" else NO_EOS_ID,
      act=_acts(t, "text_cfg", quick, source), ln_eps=_eps(t, "text_cfg", source))
  c.tokenizer = ""
  if preprocess:
    c.data.mean = tuple(preprocess.get("mean", c.data.mean))
    c.data.std = tuple(preprocess.get("std", c.data.std))
  return c


def load(src: str, expected_shapes) -> tuple[dict[str, np.ndarray], ml_collections.ConfigDict]:
  """An open_clip hub-layout directory -> (our flat params, our config)."""
  config_file = os.path.join(src, CONFIG_FILE)
  weights_file = os.path.join(src, WEIGHTS_FILE)
  if not os.path.isfile(weights_file):
    raise ConversionError(f"{weights_file}: no such file (open_clip weights are read only "
                          f"from safetensors)")
  raw = read_json(config_file)
  config = config_from_open_clip(raw.get("model_cfg", raw), source=config_file,
                                 preprocess=raw.get("preprocess_cfg"))
  params = R.to_ours(model_rules(config), load_file(weights_file), expected_shapes(config),
                     source=weights_file)
  return params, config


# ------------------------------------------------------------------ export

def _refuse(option: str, why: str):
  raise ConversionError(f"config.model.{option}: {why}; open_clip cannot represent it")


def _act_cfg(act: str, tower: str) -> dict:
  if act == "gelu_tanh":
    return {"act_kwargs": {"approximate": "tanh"}}
  if act not in ("gelu", "quick_gelu"):
    _refuse(f"{tower}.act={act!r}", "open_clip towers use gelu, gelu_tanh or quick_gelu")
  return {}


def check_representable(config: ml_collections.ConfigDict) -> None:
  """Raises, naming the option, if open_clip computes something else (after clip_layout.fold)."""
  m = config.model
  i, t = m.image, m.text
  if m.type != "two_towers":
    _refuse(f"type={m.type!r}", "an open_clip CLIP model has both towers")
  if not i.cls_token:
    _refuse("image.cls_token=False", "every open_clip ViT prepends a class token")
  if i.pool != "cls":
    _refuse(f"image.pool={i.pool!r}", "open_clip pools the class token (pool_type='tok') or "
            "the mean of the patch tokens without it (pool_type='avg'), never the mean over "
            "all tokens; use pool='cls'")
  if not i.ln_post:
    _refuse("image.ln_post=False", "open_clip always applies ln_post")
  if not t.causal and t.padding_mask:
    _refuse("text.causal=False with text.padding_mask=True", "open_clip's no_causal_mask=True "
            "lets every token attend to padding, and its model config cannot enable a "
            "padding mask (padding_mask=False, official FLIP's, exports)")
  if t.pool == "mean":
    _refuse("text.pool='mean'", "open_clip's text pool_type has no mean pooling")
  if (i.act == "quick_gelu") != (t.act == "quick_gelu"):
    _refuse(f"text.act={t.act!r}", f"open_clip's quick_gelu flag covers both towers, and the "
            f"image tower uses {i.act!r}")
  width, _, _, mlp_dim, _ = image_dims(config)
  for tower, width, mlp_dim in (("image", width, mlp_dim), ("text", t.width, t.mlp_dim)):
    if _mlp_dim(width, mlp_dim / width) != mlp_dim:
      _refuse(f"{tower}.mlp_dim={mlp_dim}", f"open_clip's mlp_ratio cannot give it exactly "
              f"for width {width}")
  _act_cfg(i.act, "image")
  _act_cfg(t.act, "text")


def model_config(config: ml_collections.ConfigDict, logit_scale: float) -> dict:
  i, t = config.model.image, config.model.text
  width, depth, heads, mlp_dim, patch = image_dims(config)
  vision = dict(image_size=config.image_size, layers=depth, width=width,
                head_width=width // heads, mlp_ratio=mlp_dim / width, patch_size=patch,
                no_ln_pre=not i.ln_pre, pool_type="tok", norm_kwargs={"eps": i.ln_eps},
                **_act_cfg(i.act, "image"))
  if t.pool == "first":
    pool = dict(pool_type="first")
  elif t.eos_id == NO_EOS_ID:
    pool = dict(pool_type="argmax")
  else:
    pool = dict(pool_type="eos", eos_id=t.eos_id)
  text = dict(context_length=config.text_len, vocab_size=t.vocab_size, width=t.width,
              heads=t.heads, layers=t.depth, mlp_ratio=t.mlp_dim / t.width, pad_id=t.pad_id,
              no_causal_mask=not t.causal, norm_kwargs={"eps": t.ln_eps}, **pool,
              **_act_cfg(t.act, "text"))
  return dict(embed_dim=config.model.embed_dim, quick_gelu=i.act == "quick_gelu",
              init_logit_scale=logit_scale, vision_cfg=vision, text_cfg=text)


def write(out_dir: str, params: dict[str, np.ndarray], config: ml_collections.ConfigDict
          ) -> None:
  """open_clip_config.json + open_clip_model.safetensors into `out_dir` (CLIP layout)."""
  check_representable(config)
  state = R.to_theirs(model_rules(config), params, target="open_clip")
  cfg = dict(model_cfg=model_config(config, float(params["logit_scale"])),
             preprocess_cfg=dict(size=config.image_size, mean=list(config.data.mean),
                                 std=list(config.data.std), interpolation="bicubic",
                                 resize_mode="shortest"))
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(cfg, f, indent=2)
  save_file(state, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
