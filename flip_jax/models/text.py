"""Text transformer: token + learned position embeddings, causal or not, three poolings.

FLIP's text tower is non-causal and pooled at the first token; OpenAI CLIP's is causal
and pooled at the EOS token (the argmax of the token ids). A non-causal tower ignores
padding keys when `padding_mask` is on (official FLIP's does not: every token attends to
the padding too); a causal one needs no padding mask for EOS pooling, because EOS never
attends to what comes after it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flip_jax import sharding
from flip_jax.models import inits as inits_lib
from flip_jax.models.attention import KeyPadding
from flip_jax.models.layers import Encoder, LayerNorm, param

POOLS = ("first", "last", "mean")


class TextTransformer(nnx.Module):

  def __init__(self, *, vocab_size: int, max_len: int, width: int, depth: int, heads: int,
               mlp_dim: int, causal: bool = False, pool: str = "first", act: str = "gelu",
               pad_id: int = 0, eos_id: int | None = None, ln_eps: float = 1e-6, remat: str = "none",
               attn_impl: str | None = None, padding_mask: bool = True, init: str = "default",
               scan: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    """padding_mask: a non-causal tower's keys at pad_id are masked ('mean' pooling always
    leaves padding out); init: the initialisation scheme (flip_jax.models.inits); scan: the
    blocks stored stacked and run as one scanned layer (models.layers.Stacked)."""
    if pool not in POOLS:
      raise ValueError(f"text pool must be one of {POOLS}, got {pool!r}")
    if max_len < 1:
      raise ValueError(f"text length must be >= 1, got {max_len}")
    self.causal, self.pool, self.pad_id, self.eos_id = causal, pool, pad_id, eos_id
    self.padding_mask = padding_mask
    self.dtype = dtype
    inits = inits_lib.scheme(init)
    self.width, self.max_len = width, max_len
    self.token_emb = param(rngs, jax.nn.initializers.normal(0.02), (vocab_size, width),
                           ("vocab", "embed"))
    self.pos_emb = param(rngs, inits.text_pos, (max_len, width), ("length", "embed"))
    self.encoder = Encoder(depth, width, heads, mlp_dim, rngs=rngs, act=act, ln_eps=ln_eps,
                           dtype=dtype, remat=remat, attn_impl=attn_impl, inits=inits.block,
                           depth_rescale=inits.depth_rescale, scan=scan)
    self.ln_final = LayerNorm(width, rngs=rngs, eps=ln_eps, dtype=dtype)

  def __call__(self, tokens, *, rng=None):
    """tokens [B, T] int -> dict(tokens [B, T, D], pooled [B, D])."""
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f"{t} text tokens exceed the model's max_len {self.max_len}")
    x = jnp.take(self.token_emb[...], tokens, axis=0).astype(self.dtype)
    x = x + self.pos_emb[:t].astype(self.dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    valid = tokens != self.pad_id
    # cuDNN takes the padding as lengths
    mask = KeyPadding(valid) if self.padding_mask and not self.causal else None
    x = self.encoder(x, rng, mask=mask, causal=self.causal)
    x = self.ln_final(x)
    if self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "last":
      # EOS: first occurrence of eos_id, or the largest token id (OpenAI CLIP's convention).
      eos = jnp.argmax(tokens == self.eos_id if self.eos_id is not None else tokens, axis=1)
      pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
    else:
      w = valid.astype(x.dtype)[..., None]
      pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    return {"tokens": x, "pooled": pooled}
