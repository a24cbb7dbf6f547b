"""Hugging Face CLIP (`CLIPModel`, `CLIPVisionModel[WithProjection]`) <-> our params and config.

HF CLIP is our ViT with ln_pre, a class token and learned positions, no patch bias,
CLS pooling, LayerNorm eps 1e-5, and a causal text tower pooled at EOS. HF applies
`post_layernorm` to the pooled CLS only; we apply ln_post to every token and then pool,
which gives the same embedding and also the per-patch features EVA regresses. Layers
map 1:1 (q/k/v/out_proj, layer_norm1/2, mlp.fc1/fc2). Weights are read and written with
`safetensors.numpy`; the config is plain JSON, so transformers is not imported here.
"""
from __future__ import annotations

import glob
import json
import os

import ml_collections
import numpy as np
from safetensors.numpy import load_file, save_file

from flip_jax.config_base import base_config
from flip_jax.interop import rules as R
from flip_jax.interop.rules import ConversionError
from flip_jax.models.from_config import NO_EOS_ID, image_dims

# transformers' CLIP*Config defaults: older config.json files omit keys left at them.
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512)
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, pad_token_id=1,
                     bos_token_id=49406, eos_token_id=49407)
CLIP_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)
# transformers' CLIPTextModel pools at argmax(input_ids) when eos_token_id is 2 (configs
# written before the EOS fix), else at the first eos_token_id.
LEGACY_EOS_ID = 2
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh"}
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
VISION_ONLY = ("CLIPVisionModel", "CLIPVisionModelWithProjection")
WEIGHTS_FILE = "model.safetensors"


# ------------------------------------------------------------------ rules

def encoder_rules(ours: str, theirs: str, depth: int) -> list[R.Rule]:
  out = []
  for i in range(depth):
    o, t = f"{ours}/encoder/blocks/{i}", f"{theirs}encoder.layers.{i}"
    for ln, hf_ln in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):
      out += [R.copy(f"{o}/{ln}/scale", f"{t}.{hf_ln}.weight"),
              R.copy(f"{o}/{ln}/bias", f"{t}.{hf_ln}.bias")]
    for name in ("q", "k", "v"):
      out += [R.linear(f"{o}/attn/{name}/kernel", f"{t}.self_attn.{name}_proj.weight"),
              R.bias(f"{o}/attn/{name}/bias", f"{t}.self_attn.{name}_proj.bias")]
    out += [R.linear(f"{o}/attn/out/kernel", f"{t}.self_attn.out_proj.weight", n_in=2),
            R.bias(f"{o}/attn/out/bias", f"{t}.self_attn.out_proj.bias")]
    for fc in ("fc1", "fc2"):
      out += [R.linear(f"{o}/mlp/{fc}/kernel", f"{t}.mlp.{fc}.weight"),
              R.bias(f"{o}/mlp/{fc}/bias", f"{t}.mlp.{fc}.bias")]
  return out


def vision_rules(prefix: str, depth: int) -> list[R.Rule]:
  p = prefix
  return [R.copy("image/cls_token", f"{p}embeddings.class_embedding"),
          R.conv_patch("image/patch_embed/kernel", f"{p}embeddings.patch_embedding.weight"),
          R.copy("image/pos_emb", f"{p}embeddings.position_embedding.weight"),
          R.copy("image/ln_pre/scale", f"{p}pre_layrnorm.weight"),
          R.copy("image/ln_pre/bias", f"{p}pre_layrnorm.bias"),
          *encoder_rules("image", p, depth),
          R.copy("image/ln_post/scale", f"{p}post_layernorm.weight"),
          R.copy("image/ln_post/bias", f"{p}post_layernorm.bias")]


def text_rules(depth: int) -> list[R.Rule]:
  p = "text_model."
  return [R.copy("text/token_emb", f"{p}embeddings.token_embedding.weight"),
          R.copy("text/pos_emb", f"{p}embeddings.position_embedding.weight"),
          *encoder_rules("text", p, depth),
          R.copy("text/ln_final/scale", f"{p}final_layer_norm.weight"),
          R.copy("text/ln_final/bias", f"{p}final_layer_norm.bias")]


def model_rules(config: ml_collections.ConfigDict, vision_prefix: str) -> list[R.Rule]:
  m = config.model
  out = vision_rules(vision_prefix, image_dims(config).depth)
  if m.embed_dim:
    out.append(R.linear("image_proj/kernel", "visual_projection.weight"))
  if m.type == "two_towers":
    out += text_rules(m.text.depth)
    out += [R.linear("text_proj/kernel", "text_projection.weight"),
            R.copy("logit_scale", "logit_scale")]
  return out


def _ignored(key: str) -> bool:
  """Buffers some transformers versions saved (position ids), not weights."""
  return key.endswith("position_ids")


# ------------------------------------------------------------------ import

def _with_defaults(values: dict, defaults: dict) -> dict:
  return {**defaults, **{k: v for k, v in values.items() if v is not None}}


def _act(name: str, source: str, key: str) -> str:
  if name not in ACTS:
    raise ConversionError(f"{source}: {key}={name!r} has no equivalent here "
                          f"(supported: {sorted(ACTS)})")
  return ACTS[name]


def config_from_hf(hf: dict, *, source: str, has_projection: bool,
                   preprocessor: dict | None = None) -> ml_collections.ConfigDict:
  """Our config (base_config + model section) for a HF CLIP config.json's contents."""
  kind = hf.get("model_type")
  if kind == "clip":
    vision_key = "vision_config"
  elif kind == "clip_vision_model":
    vision_key = ""
  else:
    raise ConversionError(f"{source}: model_type {kind!r} is not CLIP (expected 'clip' for "
                          f"CLIPModel or 'clip_vision_model' for {' / '.join(VISION_ONLY)})")
  v = _with_defaults(hf.get(vision_key, {}) if vision_key else hf, VISION_DEFAULTS)
  vk = f"{vision_key}." if vision_key else ""
  if v["num_channels"] != 3:
    raise ConversionError(f"{source}: {vk}num_channels={v['num_channels']}: only RGB (3)")
  c = base_config()
  c.image_size = v["image_size"]
  c.model.image.update(
      variant=f"custom/{v['patch_size']}", width=v["hidden_size"],
      depth=v["num_hidden_layers"], heads=v["num_attention_heads"],
      mlp_dim=v["intermediate_size"], pos_emb="learned", cls_token=True, ln_pre=True,
      pool="cls", ln_post=True, act=_act(v["hidden_act"], source, f"{vk}hidden_act"),
      ln_eps=float(v["layer_norm_eps"]), patch_bias=False)
  if kind == "clip":
    top = _with_defaults(hf, CLIP_DEFAULTS)
    t = _with_defaults(hf.get("text_config", {}), TEXT_DEFAULTS)
    c.model.type = "two_towers"
    c.model.embed_dim = top["projection_dim"]
    c.model.logit_scale_init = float(top["logit_scale_init_value"])
    c.text_len = t["max_position_embeddings"]
    eos = t["eos_token_id"]
    c.model.text.update(
        width=t["hidden_size"], depth=t["num_hidden_layers"], heads=t["num_attention_heads"],
        mlp_dim=t["intermediate_size"], vocab_size=t["vocab_size"], pad_id=t["pad_token_id"],
        causal=True, pool="last", eos_id=NO_EOS_ID if eos == LEGACY_EOS_ID else eos,
        act=_act(t["hidden_act"], source, "text_config.hidden_act"),
        ln_eps=float(t["layer_norm_eps"]))
  else:
    c.model.type = "image_tower"
    c.model.embed_dim = v["projection_dim"] if has_projection else 0
  c.tokenizer = ""
  if preprocessor:
    c.data.mean = tuple(preprocessor.get("image_mean", c.data.mean))
    c.data.std = tuple(preprocessor.get("image_std", c.data.std))
  return c


def read_weights(src: str) -> tuple[dict[str, np.ndarray], str]:
  """All *.safetensors in `src` (one file or shards) -> (state dict, name for errors)."""
  files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
  if not files:
    raise ConversionError(f"{src}: no *.safetensors weights (pickled .bin/.pt files are "
                          f"not read)")
  state = {}
  for f in files:
    state.update(load_file(f))
  return state, files[0] if len(files) == 1 else os.path.join(src, "*.safetensors")


def read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as err:
      raise ConversionError(f"{path}: not valid JSON ({err})") from None


def load(src: str, expected_shapes) -> tuple[dict[str, np.ndarray], ml_collections.ConfigDict]:
  """A HF CLIP directory -> (our flat params, our config).

  `expected_shapes(config)` gives our param shapes for a config (ours.param_shapes).
  """
  config_file = os.path.join(src, "config.json")
  hf = read_json(config_file)
  state, weights_file = read_weights(src)
  preprocessor_file = os.path.join(src, "preprocessor_config.json")
  preprocessor = read_json(preprocessor_file) if os.path.isfile(preprocessor_file) else None
  config = config_from_hf(hf, source=config_file, preprocessor=preprocessor,
                          has_projection="visual_projection.weight" in state)
  # transformers 5 saves a bare CLIPVisionModel without the 'vision_model.' prefix.
  prefix = ("vision_model." if config.model.type == "two_towers"
            or "vision_model.embeddings.class_embedding" in state else "")
  params = R.to_ours(model_rules(config, prefix), state, expected_shapes(config),
                     source=weights_file, ignore=_ignored)
  return params, config


# ------------------------------------------------------------------ export

def _refuse(option: str, why: str):
  raise ConversionError(f"config.model.{option}: {why}; Hugging Face CLIP cannot represent "
                        f"it")


def check_representable(config: ml_collections.ConfigDict) -> None:
  """Raises, naming the option, if HF CLIP computes something else (after clip_layout.fold)."""
  i = config.model.image
  if not i.cls_token:
    _refuse("image.cls_token=False", "HF CLIP's vision tower always has a class token")
  if i.pool != "cls":
    _refuse(f"image.pool={i.pool!r}", "HF CLIP pools the class token (pool='cls')")
  if not i.ln_pre:
    _refuse("image.ln_pre=False", "HF CLIP always applies pre_layrnorm")
  if not i.ln_post:
    _refuse("image.ln_post=False", "HF CLIP always applies post_layernorm")
  if i.act not in HF_ACTS:
    _refuse(f"image.act={i.act!r}", f"HF CLIP activations here are {sorted(HF_ACTS)}")
  if config.model.type == "two_towers":
    t = config.model.text
    if not t.causal:
      _refuse("text.causal=False", "CLIPTextModel is always causal")
    if t.pool != "last":
      _refuse(f"text.pool={t.pool!r}", "CLIPTextModel pools at the EOS token (pool='last')")
    if t.eos_id == LEGACY_EOS_ID:
      _refuse(f"text.eos_id={LEGACY_EOS_ID}", "transformers reads eos_token_id=2 as 'pool at "
              "the largest id'")
    if t.act not in HF_ACTS:
      _refuse(f"text.act={t.act!r}", f"HF CLIP activations here are {sorted(HF_ACTS)}")
  elif config.model.type != "image_tower":
    _refuse(f"type={config.model.type!r}", "not a CLIP model")


def _vision_config(config) -> dict:
  i = config.model.image
  width, depth, heads, mlp_dim, patch = image_dims(config)
  return dict(model_type="clip_vision_model", hidden_size=width, intermediate_size=mlp_dim,
              num_hidden_layers=depth, num_attention_heads=heads, num_channels=3,
              image_size=config.image_size, patch_size=patch,
              hidden_act=HF_ACTS[i.act], layer_norm_eps=i.ln_eps,
              projection_dim=config.model.embed_dim or VISION_DEFAULTS["projection_dim"],
              attention_dropout=0.0)


def hf_config(config: ml_collections.ConfigDict, logit_scale: float | None) -> dict:
  vision = _vision_config(config)
  if config.model.type == "image_tower":
    arch = VISION_ONLY[1] if config.model.embed_dim else VISION_ONLY[0]
    return dict(vision, architectures=[arch])
  t = config.model.text
  text = dict(model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
              intermediate_size=t.mlp_dim, num_hidden_layers=t.depth,
              num_attention_heads=t.heads, max_position_embeddings=config.text_len,
              hidden_act=HF_ACTS[t.act], layer_norm_eps=t.ln_eps, pad_token_id=t.pad_id,
              bos_token_id=None,  # unused by the model; the tokenizer adds its own
              eos_token_id=LEGACY_EOS_ID if t.eos_id == NO_EOS_ID else t.eos_id,
              projection_dim=config.model.embed_dim, attention_dropout=0.0)
  return dict(architectures=["CLIPModel"], model_type="clip",
              projection_dim=config.model.embed_dim, logit_scale_init_value=logit_scale,
              text_config=text, vision_config=vision)


def preprocessor_config(config: ml_collections.ConfigDict) -> dict:
  """CLIPImageProcessor settings: shorter side to image_size, centre crop, our mean/std."""
  s = config.image_size
  return dict(image_processor_type="CLIPImageProcessor", do_resize=True,
              size={"shortest_edge": s}, do_center_crop=True,
              crop_size={"height": s, "width": s}, do_rescale=True, rescale_factor=1 / 255,
              do_normalize=True, image_mean=list(config.data.mean),
              image_std=list(config.data.std), resample=3, do_convert_rgb=True)


def write(out_dir: str, params: dict[str, np.ndarray], config: ml_collections.ConfigDict
          ) -> None:
  """config.json + model.safetensors (+ preprocessor_config.json) into `out_dir`.

  `params`/`config` must already be in CLIP layout (clip_layout.fold).
  """
  check_representable(config)
  prefix = "vision_model." if (config.model.type == "two_towers"
                               or config.model.embed_dim) else ""
  state = R.to_theirs(model_rules(config, prefix), params, target="Hugging Face CLIP")
  logit_scale = float(params["logit_scale"]) if "logit_scale" in params else None
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config(config, logit_scale), f, indent=2)
  with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
    json.dump(preprocessor_config(config), f, indent=2)
  save_file(state, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
