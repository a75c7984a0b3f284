"""Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases).

Takes input embeddings, so memory vectors can be prefixed to token embeddings. Parameter names
follow the Hugging Face Llama checkpoints so weights load by name (see `hf.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradmem_jax.models import common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 70
  hidden_size: int = 128          # d
  intermediate_size: int = 512    # SwiGLU width
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4           # < num_heads: grouped-query attention
  head_dim: Optional[int] = None  # default hidden_size // num_heads
  rms_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Optional[tuple] = None  # tuple of (key, value) pairs (hashable), e.g. llama3
  tie_embeddings: bool = True
  max_positions: int = 8192
  init_std: float = 0.02
  dtype: str = 'float32'          # compute dtype
  param_dtype: str = 'float32'
  remat: str = 'none'             # per-block remat policy name (common.REMAT_POLICIES)

  @property
  def dh(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def validate(self) -> None:
    for f in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers', 'num_heads',
              'num_kv_heads'):
      if getattr(self, f) <= 0:
        raise ValueError(f'model.{f} must be > 0, got {getattr(self, f)}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'model.num_heads={self.num_heads} must be a multiple of '
                       f'model.num_kv_heads={self.num_kv_heads}')
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ValueError(f'model.hidden_size={self.hidden_size} must be divisible by '
                       f'model.num_heads={self.num_heads} (or set model.head_dim)')
    if self.dh % 2:
      raise ValueError(f'head dim {self.dh} must be even for rotary embeddings')
    common.get_dtype(self.dtype, 'model.dtype')
    common.get_dtype(self.param_dtype, 'model.param_dtype')
    common.get_remat_policy(self.remat, 'model.remat')


class LlamaAttention(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dtype, param_dtype=pdtype,
                                     kernel_init=common.normal_init(cfg.init_std), name=name)
    b, t, d = x.shape
    # Projections on [B*T, d] (2-D dots): their weight gradients then contract over the major
    # axis of two plain matrices, which XLA:CPU handles without transposing a fused operand.
    x2 = x.reshape(b * t, d)
    q = dense(cfg.num_heads * cfg.dh, 'q_proj')(x2).reshape(b, t, cfg.num_heads, cfg.dh)
    k = dense(cfg.num_kv_heads * cfg.dh, 'k_proj')(x2).reshape(b, t, cfg.num_kv_heads, cfg.dh)
    v = dense(cfg.num_kv_heads * cfg.dh, 'v_proj')(x2).reshape(b, t, cfg.num_kv_heads, cfg.dh)
    q = common.apply_rope(q, cos, sin)
    k = common.apply_rope(k, cos, sin)
    out = common.causal_attention(q, k, v).reshape(b * t, cfg.num_heads * cfg.dh)
    return dense(cfg.hidden_size, 'o_proj')(out).reshape(b, t, cfg.hidden_size)


class LlamaMLP(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dtype, param_dtype=pdtype,
                                     kernel_init=common.normal_init(cfg.init_std), name=name)
    shape = x.shape
    x = x.reshape(-1, shape[-1])  # 2-D dots (see LlamaAttention)
    gate = dense(cfg.intermediate_size, 'gate_proj')(x)
    up = dense(cfg.intermediate_size, 'up_proj')(x)
    return dense(cfg.hidden_size, 'down_proj')(jax.nn.silu(gate) * up).reshape(shape)


class LlamaBlock(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    h = common.RMSNorm(cfg.rms_eps, dtype, pdtype, name='input_layernorm')(x)
    x = x + LlamaAttention(cfg, name='self_attn')(h, cos, sin)
    h = common.RMSNorm(cfg.rms_eps, dtype, pdtype, name='post_attention_layernorm')(x)
    return x + LlamaMLP(cfg, name='mlp')(h)


class LlamaDecoder(nn.Module):
  """Input embeddings [B, T, d] + positions [T] or [B, T] -> final hidden states [B, T, d]."""
  cfg: LlamaConfig

  def setup(self):
    cfg = self.cfg
    dtype, pdtype = common.get_dtype(cfg.dtype), common.get_dtype(cfg.param_dtype)
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
                                 embedding_init=common.normal_init(cfg.init_std))
    use_remat, policy = common.get_remat_policy(cfg.remat, 'model.remat')
    block = nn.remat(LlamaBlock, policy=policy) if use_remat else LlamaBlock
    self.layers = [block(cfg, name=f'layers_{i}') for i in range(cfg.num_layers)]
    self.norm = common.RMSNorm(cfg.rms_eps, dtype, pdtype)
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=pdtype,
                              kernel_init=common.normal_init(cfg.init_std))
    rope_scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    self.inv_freq = common.rope_inv_freq(cfg.dh, cfg.rope_theta, rope_scaling)

  def embed(self, ids: Array) -> Array:
    return self.embed_tokens(ids)

  def __call__(self, embeds: Array, positions: Array, deterministic: bool = True) -> Array:
    del deterministic  # Llama has no dropout.
    cos, sin = common.rope_tables(positions, self.inv_freq)
    x = embeds.astype(common.get_dtype(self.cfg.dtype))
    for layer in self.layers:
      x = layer(x, cos, sin)
    return self.norm(x)

  def logits(self, hidden: Array) -> Array:
    if self.cfg.tie_embeddings:
      out = self.embed_tokens.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return common.at_least_f32(out)

  def init_graph(self, ids: Array, positions: Array) -> Array:
    """Touches every parameter (used by `init`)."""
    return self.logits(self(self.embed(ids), positions))
