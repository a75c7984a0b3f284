"""Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention; biases only on the
attention projections, when asked: Qwen2 puts them on q/k/v, Llama's `attention_bias` on all four).

Takes input embeddings, so memory vectors can be prefixed to token embeddings. Parameter names
follow the Hugging Face Llama checkpoints; the family's Hugging Face name table (config.json
fields, tensor names) is at the end of this file and registered with the family.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradmem_jax.models import base, common, hf

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
  attention_bias: bool = False    # biases on q/k/v_proj (Qwen2; Llama's attention_bias=true)
  o_proj_bias: bool = False       # bias on o_proj (Llama's attention_bias=true; not Qwen2)
  attn_q_block: int = -1          # > 0: causal attention in query blocks of this many rows that
                                  # skip the masked key blocks (exact; common.causal_attention);
                                  # 0: dense; -1: 128 on CPU (measured there only: WORKSPACE
                                  # section 8), 0 elsewhere
  scan_layers: bool = False       # run the blocks as one lax.scan over their stacked weights:
                                  # one block's graph to compile instead of num_layers copies
                                  # (SmolLM2's 30: WORKSPACE section 8). Same parameters and
                                  # names; the weights are stacked on each call.
  # Fields that only change how the model runs: may be set over a pretrained checkpoint.
  RUNTIME_FIELDS: ClassVar[tuple] = ('attn_q_block', 'scan_layers')

  @property
  def dh(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def validate(self) -> None:
    common.check_model_fields(self, ('vocab_size', 'hidden_size', 'intermediate_size',
                                     'num_layers', 'num_heads', 'num_kv_heads'))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'model.num_heads={self.num_heads} must be a multiple of '
                       f'model.num_kv_heads={self.num_kv_heads}')
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ValueError(f'model.hidden_size={self.hidden_size} must be divisible by '
                       f'model.num_heads={self.num_heads} (or set model.head_dim)')
    if self.attn_q_block < -1:
      raise ValueError(f'model.attn_q_block={self.attn_q_block} must be >= -1 (0: dense attention, '
                       '-1: 128 rows on CPU and dense elsewhere, N > 0: blocks of N query rows)')
    if self.dh % 2:
      raise ValueError(f'head dim {self.dh} must be even for rotary embeddings')


def _dense(cfg: LlamaConfig, features: int, name: str, bias: bool = False) -> nn.Dense:
  """A projection in the config's dtypes (bias-free unless `bias`)."""
  return nn.Dense(features, use_bias=bias, dtype=common.get_dtype(cfg.dtype),
                  param_dtype=common.get_dtype(cfg.param_dtype),
                  kernel_init=common.normal_init(cfg.init_std), name=name)


CPU_ATTN_Q_BLOCK = 128


def attn_q_block(cfg: LlamaConfig) -> int:
  """model.attn_q_block resolved: -1 is CPU_ATTN_Q_BLOCK on a CPU backend, dense elsewhere (the
  blocks were measured on CPU only: WORKSPACE.md, section 8)."""
  if cfg.attn_q_block >= 0:
    return cfg.attn_q_block
  return CPU_ATTN_Q_BLOCK if jax.default_backend() == 'cpu' else 0


class LlamaAttention(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array) -> Array:
    cfg = self.cfg
    dense = lambda n, name, bias=False: _dense(cfg, n, name, bias)
    qkv_bias = cfg.attention_bias
    b, t, d = x.shape
    # Projections on [B*T, d] (2-D dots): their weight gradients then contract over the major
    # axis of two plain matrices, which XLA:CPU handles without transposing a fused operand.
    x2 = x.reshape(b * t, d)
    q = dense(cfg.num_heads * cfg.dh, 'q_proj', qkv_bias)(x2).reshape(b, t, cfg.num_heads, cfg.dh)
    k = dense(cfg.num_kv_heads * cfg.dh, 'k_proj', qkv_bias)(x2).reshape(b, t, cfg.num_kv_heads, cfg.dh)
    v = dense(cfg.num_kv_heads * cfg.dh, 'v_proj', qkv_bias)(x2).reshape(b, t, cfg.num_kv_heads, cfg.dh)
    q = common.apply_rope(q, cos, sin)
    k = common.apply_rope(k, cos, sin)
    out = common.causal_attention(q, k, v, q_block=attn_q_block(cfg))
    out = out.reshape(b * t, cfg.num_heads * cfg.dh)
    return dense(cfg.hidden_size, 'o_proj', cfg.o_proj_bias)(out).reshape(b, t, cfg.hidden_size)


class LlamaMLP(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dense = lambda n, name: _dense(cfg, n, name)
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
    h = common.rms_norm(cfg, name='input_layernorm')(x)
    x = x + LlamaAttention(cfg, name='self_attn')(h, cos, sin)
    h = common.rms_norm(cfg, name='post_attention_layernorm')(x)
    return x + LlamaMLP(cfg, name='mlp')(h)


class LlamaDecoder(nn.Module):
  """Input embeddings [B, T, d] + positions [T] or [B, T] -> final hidden states [B, T, d]."""
  cfg: LlamaConfig

  def setup(self):
    cfg = self.cfg
    dtype, pdtype = common.dtypes(cfg)
    self.embed_tokens = common.embedding(cfg, cfg.vocab_size, cfg.init_std)
    self.layers = common.blocks(LlamaBlock, cfg, 'layers')
    self.norm = common.rms_norm(cfg)
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
    if self.cfg.scan_layers and not self.is_initializing():
      x = common.scan_blocks(self.cfg, self.layers, LlamaBlock(self.cfg, parent=None), x, cos,
                             sin)
    else:
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


# ------------------------------------------------------------------------------------------------
# The family: registry entry and Hugging Face name table.

LLAMA_ROPE_TYPES = ('default', 'llama3')


def _llama_rope(c: Mapping[str, Any]) -> tuple[float, Optional[dict]]:
  """(rope_theta, rope_scaling) from either the legacy (`rope_theta` + `rope_scaling`) or the
  transformers-5 (`rope_parameters`) form. As in transformers, a legacy `rope_scaling` takes
  precedence over `rope_parameters`, and a theta inside the dict over a top-level `rope_theta`."""
  rp = c.get('rope_scaling') or c.get('rope_parameters') or {}
  field = 'rope_scaling' if c.get('rope_scaling') else 'rope_parameters'
  if not isinstance(rp, Mapping):
    raise ValueError(f'config.{field} must be a dict, got {type(rp).__name__}')
  if any(isinstance(v, Mapping) for v in rp.values()):
    raise ValueError(f'config.{field} is nested per layer type, which is not supported; allowed: '
                     f'one flat dict for all layers')
  theta = float(rp.get('rope_theta', c.get('rope_theta', 10000.0)))
  partial = rp.get('partial_rotary_factor', c.get('partial_rotary_factor'))
  if partial is not None and float(partial) != 1.0:
    raise ValueError(f'config.partial_rotary_factor={partial} is not supported; allowed: 1.0')
  rope_type = rp.get('rope_type', rp.get('type', 'default'))
  if rope_type not in LLAMA_ROPE_TYPES:
    raise ValueError(f'config.{field}.rope_type={rope_type!r} is not supported; allowed: '
                     f'{list(LLAMA_ROPE_TYPES)}')
  if rope_type == 'default':
    return theta, None
  for k in ('factor', 'low_freq_factor', 'high_freq_factor'):
    if rp.get(k) is None:
      raise ValueError(f"config.{field}.{k} is required for rope_type 'llama3'")
  # transformers: a top-level original_max_position_embeddings wins, then the dict's, then
  # max_position_embeddings.
  old_len = c.get('original_max_position_embeddings')
  if old_len is None:
    old_len = rp.get('original_max_position_embeddings', c.get('max_position_embeddings'))
  if old_len is None:
    raise ValueError(f'config.{field}.original_max_position_embeddings is required for '
                     f"rope_type 'llama3'")
  if float(rp['high_freq_factor']) == float(rp['low_freq_factor']):
    raise ValueError(f'config.{field}: high_freq_factor must differ from low_freq_factor')
  return theta, {
      'rope_type': 'llama3',
      'factor': float(rp['factor']),
      'low_freq_factor': float(rp['low_freq_factor']),
      'high_freq_factor': float(rp['high_freq_factor']),
      'original_max_position_embeddings': int(old_len),
  }


def _llama_config(c: Mapping[str, Any]) -> dict:
  """config.json of a Llama (incl. SmolLM) or Qwen2 model -> our config.model dict."""
  qwen2 = c.get('model_type') == 'qwen2'
  act = c.get('hidden_act', 'silu')
  if act != 'silu':
    raise ValueError(f"config.hidden_act={act!r} is not supported for llama; allowed: ['silu']")
  if c.get('mlp_bias'):
    raise ValueError(f'config.mlp_bias={c["mlp_bias"]!r} is not supported (our Llama MLP has no '
                     'biases); allowed: false')
  if qwen2:
    # Qwen2: q/k/v biases always, none on o_proj; sliding-window layers are not implemented.
    if c.get('use_sliding_window'):
      raise ValueError('config.use_sliding_window=true is not supported for qwen2; allowed: false')
    if c.get('layer_types') and any(t != 'full_attention' for t in c['layer_types']):
      raise ValueError(f'config.layer_types={c["layer_types"]!r} is not supported for qwen2; '
                       "allowed: only 'full_attention'")
    qkv_bias, o_bias = True, False
  else:
    qkv_bias = o_bias = bool(c.get('attention_bias', False))
  hidden = int(hf.need(c, 'hidden_size'))
  heads = int(hf.need(c, 'num_attention_heads'))
  theta, scaling = _llama_rope(c)
  out = {
      'kind': 'llama',
      'vocab_size': int(hf.need(c, 'vocab_size')),
      'hidden_size': hidden,
      'intermediate_size': int(hf.need(c, 'intermediate_size')),
      'num_layers': int(hf.need(c, 'num_hidden_layers')),
      'num_heads': heads,
      'num_kv_heads': int(c.get('num_key_value_heads') or heads),
      'rms_eps': float(c.get('rms_norm_eps', 1e-6)),        # transformers' LlamaConfig default
      'rope_theta': theta,
      'rope_scaling': scaling,
      'tie_embeddings': bool(c.get('tie_word_embeddings', False)),  # LlamaConfig default
      'max_positions': int(c.get('max_position_embeddings', 2048)),
      'init_std': float(c.get('initializer_range', 0.02)),
  }
  out['attention_bias'] = qkv_bias
  out['o_proj_bias'] = o_bias
  head_dim = c.get('head_dim')
  if head_dim is not None and (hidden % heads or int(head_dim) != hidden // heads):
    out['head_dim'] = int(head_dim)
  return out


def hf_name_table(cfg: LlamaConfig) -> dict[tuple[str, ...], base.HFName]:
  """Our parameter path -> (HF tensor name without the base-model prefix, transpose?)."""
  table: dict[tuple[str, ...], base.HFName] = {('embed_tokens', 'embedding'): ('embed_tokens.weight', False)}
  for i in range(cfg.num_layers):
    p = f'layers_{i}'
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      table[(p, norm, 'scale')] = (f'layers.{i}.{norm}.weight', False)
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      table[(p, 'self_attn', proj, 'kernel')] = (f'layers.{i}.self_attn.{proj}.weight', True)
      if cfg.o_proj_bias if proj == 'o_proj' else cfg.attention_bias:
        table[(p, 'self_attn', proj, 'bias')] = (f'layers.{i}.self_attn.{proj}.bias', False)
    for proj in ('gate_proj', 'up_proj', 'down_proj'):
      table[(p, 'mlp', proj, 'kernel')] = (f'layers.{i}.mlp.{proj}.weight', True)
  table[('norm', 'scale')] = ('norm.weight', False)
  if not cfg.tie_embeddings:
    table[('lm_head', 'kernel')] = ('lm_head.weight', True)
  return table


def output_embedding(params, cfg: LlamaConfig):
  if cfg.tie_embeddings:
    return params['embed_tokens']['embedding'].T
  return params['lm_head']['kernel']


FAMILY = base.register_family(base.Family(
    name='llama', config_cls=LlamaConfig, module_cls=LlamaDecoder,
    output_embedding=output_embedding,
    hf=base.HFSpec(model_types=('llama', 'qwen2'), config_from_hf=_llama_config, name_table=hf_name_table,
                   tied_head=lambda cfg: 'embed_tokens.weight' if cfg.tie_embeddings else None,
                   default_prefix='model.',
                   buffers=(r'(?:layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq',))))
