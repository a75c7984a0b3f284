"""GPT-2-style decoder (learned positions, LayerNorm, GELU-tanh, biases, dropout).

Takes input embeddings; learned position embeddings are added inside. Dropout (embedding,
attention, residual) is driven by the 'dropout' rng collection, so every call with a fresh key gets
a fresh mask (GradMem draws one per inner step). Parameter names follow the Hugging Face GPT-2
checkpoints.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradmem_jax.models import common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int = 50257
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 1024
  layer_norm_eps: float = 1e-5
  embd_dropout: float = 0.1
  attn_dropout: float = 0.1
  resid_dropout: float = 0.1
  init_std: float = 0.02
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'

  @property
  def dh(self) -> int:
    return self.hidden_size // self.num_heads

  def validate(self) -> None:
    for f in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
              'max_positions'):
      if getattr(self, f) <= 0:
        raise ValueError(f'model.{f} must be > 0, got {getattr(self, f)}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'model.hidden_size={self.hidden_size} must be divisible by '
                       f'model.num_heads={self.num_heads}')
    for f in ('embd_dropout', 'attn_dropout', 'resid_dropout'):
      if not 0.0 <= getattr(self, f) < 1.0:
        raise ValueError(f'model.{f} must be in [0, 1), got {getattr(self, f)}')
    common.get_dtype(self.dtype, 'model.dtype')
    common.get_dtype(self.param_dtype, 'model.param_dtype')
    common.get_remat_policy(self.remat, 'model.remat')


class GPT2Block(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    init = common.normal_init(cfg.init_std)
    # GPT-2 scales the residual output projections by 1/sqrt(2 * layers) at init.
    proj_init = common.normal_init(cfg.init_std / math.sqrt(2 * cfg.num_layers))
    ln = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype, name=name)
    dense = lambda n, name, k_init=init: nn.Dense(n, dtype=dtype, param_dtype=pdtype,
                                                  kernel_init=k_init, name=name)
    b, t, d = x.shape
    x = x.reshape(b * t, d)  # 2-D dense products (see LlamaAttention)
    h = ln('ln_1')(x)
    qkv = dense(3 * d, 'c_attn')(h)
    q, k, v = (a.reshape(b, t, cfg.num_heads, cfg.dh) for a in jnp.split(qkv, 3, axis=-1))
    use_attn_drop = not deterministic and cfg.attn_dropout > 0
    attn = common.causal_attention(
        q, k, v, dropout_rate=cfg.attn_dropout, deterministic=not use_attn_drop,
        dropout_rng=self.make_rng('dropout') if use_attn_drop else None)
    attn = dense(d, 'c_proj', proj_init)(attn.reshape(b * t, d))
    x = x + nn.Dropout(cfg.resid_dropout)(attn, deterministic=deterministic)
    h = ln('ln_2')(x)
    h = jax.nn.gelu(dense(cfg.intermediate_size, 'c_fc')(h), approximate=True)
    h = dense(d, 'mlp_c_proj', proj_init)(h)
    return (x + nn.Dropout(cfg.resid_dropout)(h, deterministic=deterministic)).reshape(b, t, d)


class GPT2Decoder(nn.Module):
  """Input embeddings [B, T, d] + positions [T] or [B, T] -> final hidden states [B, T, d]."""
  cfg: GPT2Config

  def setup(self):
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    self.wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
                        embedding_init=common.normal_init(cfg.init_std))
    self.wpe = nn.Embed(cfg.max_positions, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
                        embedding_init=common.normal_init(0.01))
    use_remat, policy = common.get_remat_policy(cfg.remat, 'model.remat')
    block = nn.remat(GPT2Block, policy=policy, static_argnums=(2,)) if use_remat else GPT2Block
    self.h = [block(cfg, name=f'h_{i}') for i in range(cfg.num_layers)]
    self.ln_f = nn.LayerNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=pdtype)
    self.drop = nn.Dropout(cfg.embd_dropout)

  def embed(self, ids: Array) -> Array:
    return self.wte(ids)

  def __call__(self, embeds: Array, positions: Array, deterministic: bool = True) -> Array:
    t = embeds.shape[-2]
    if t > self.cfg.max_positions:
      raise ValueError(f'sequence length {t} exceeds model.max_positions={self.cfg.max_positions}')
    pos = self.wpe(positions)
    x = embeds.astype(common.get_dtype(self.cfg.dtype)) + pos
    x = self.drop(x, deterministic=deterministic)
    for block in self.h:
      x = block(x, deterministic)
    return self.ln_f(x)

  def logits(self, hidden: Array) -> Array:
    return common.at_least_f32(self.wte.attend(hidden))

  def init_graph(self, ids: Array, positions: Array) -> Array:
    """Touches every parameter (used by `init`)."""
    return self.logits(self(self.embed(ids), positions))
