"""GPT-2-style decoder (learned positions, LayerNorm, GELU-tanh, biases, dropout).

Takes input embeddings; learned position embeddings are added inside. Dropout (embedding,
attention, residual) is driven by the 'dropout' rng collection, so every call with a fresh key gets
a fresh mask (GradMem draws one per inner step). Parameter names follow the Hugging Face GPT-2
checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradmem_jax.models import base, common, hf

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """GPT-2 small by default (124M parameters)."""
  vocab_size: int = 50257         # byte-level BPE vocabulary
  hidden_size: int = 768          # d
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072   # MLP width (4 d)
  max_positions: int = 1024       # learned position embeddings
  layer_norm_eps: float = 1e-5
  embd_dropout: float = 0.1
  attn_dropout: float = 0.1
  resid_dropout: float = 0.1
  init_std: float = 0.02
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'
  scan_layers: bool = False       # the blocks as one lax.scan over their stacked weights (as
                                  # Llama's; common.scan_blocks). Dropout masks then come from
                                  # one key per layer: fresh, but not the loop's streams.

  # Fields a pretrained checkpoint's config may be run with changed (models/pretrained.py).
  RUNTIME_FIELDS = ('embd_dropout', 'attn_dropout', 'resid_dropout', 'scan_layers')

  @property
  def dh(self) -> int:
    return self.hidden_size // self.num_heads

  def validate(self) -> None:
    common.check_model_fields(self, ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                                     'intermediate_size', 'max_positions'))
    if self.hidden_size % self.num_heads:
      raise ValueError(f'model.hidden_size={self.hidden_size} must be divisible by '
                       f'model.num_heads={self.num_heads}')
    for f in ('embd_dropout', 'attn_dropout', 'resid_dropout'):
      if not 0.0 <= getattr(self, f) < 1.0:
        raise ValueError(f'model.{f} must be in [0, 1), got {getattr(self, f)}')


class GPT2Block(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.dtypes(cfg)
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
  """Input embeddings [B, T, d] + positions [T] or [B, T] -> final hidden states [B, T, d]; the
  learned position embeddings are added here, so memory vectors get positions like tokens."""
  cfg: GPT2Config

  def setup(self):
    cfg = self.cfg
    dtype, pdtype = common.dtypes(cfg)
    self.wte = common.embedding(cfg, cfg.vocab_size, cfg.init_std)
    self.wpe = common.embedding(cfg, cfg.max_positions, 0.01)
    self.h = common.blocks(GPT2Block, cfg, 'h', static_argnums=(2,))
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
    if self.cfg.scan_layers and not self.is_initializing():
      dropout = not deterministic and max(self.cfg.attn_dropout, self.cfg.resid_dropout) > 0
      x = common.scan_blocks(self.cfg, self.h, GPT2Block(self.cfg, parent=None), x,
                             deterministic, dropout_rng=self.make_rng('dropout') if dropout else None)
    else:
      for block in self.h:
        x = block(x, deterministic)
    return self.ln_f(x)

  def logits(self, hidden: Array) -> Array:
    return common.at_least_f32(self.wte.attend(hidden))

  def init_graph(self, ids: Array, positions: Array) -> Array:
    """Touches every parameter (used by `init`)."""
    return self.logits(self(self.embed(ids), positions))


# ------------------------------------------------------------------------------------------------
# The family: registry entry and Hugging Face name table.

# Both are the tanh approximation of GELU (jax.nn.gelu(approximate=True)).
GPT2_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh')


def _gpt2_config(c: Mapping[str, Any]) -> dict:
  act = c.get('activation_function', 'gelu_new')
  if act not in GPT2_ACTIVATIONS:
    raise ValueError(f'config.activation_function={act!r} is not supported for gpt2; allowed: '
                     f'{list(GPT2_ACTIVATIONS)}')
  for f, want in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                  ('reorder_and_upcast_attn', False), ('add_cross_attention', False),
                  ('tie_word_embeddings', True)):
    if bool(c.get(f, want)) != want:
      raise ValueError(f'config.{f}={c[f]!r} is not supported for gpt2; allowed: '
                       f'{str(want).lower()}')
  hidden = int(hf.need(c, 'n_embd', 'hidden_size'))
  inner = c.get('n_inner')
  return {
      'kind': 'gpt2',
      'vocab_size': int(hf.need(c, 'vocab_size')),
      'hidden_size': hidden,
      'num_layers': int(hf.need(c, 'n_layer', 'num_hidden_layers')),
      'num_heads': int(hf.need(c, 'n_head', 'num_attention_heads')),
      'intermediate_size': int(inner) if inner is not None else 4 * hidden,
      'max_positions': int(hf.need(c, 'n_positions', 'max_position_embeddings')),
      'layer_norm_eps': float(c.get('layer_norm_epsilon', 1e-5)),
      'embd_dropout': float(c.get('embd_pdrop', 0.1)),
      'attn_dropout': float(c.get('attn_pdrop', 0.1)),
      'resid_dropout': float(c.get('resid_pdrop', 0.1)),
      'init_std': float(c.get('initializer_range', 0.02)),
  }


def hf_name_table(cfg: GPT2Config) -> dict[tuple[str, ...], base.HFName]:
  """Our parameter path -> (HF tensor name without the base-model prefix, transpose?)."""
  table: dict[tuple[str, ...], base.HFName] = {('wte', 'embedding'): ('wte.weight', False),
                                               ('wpe', 'embedding'): ('wpe.weight', False)}
  # Our name -> HF module path inside block h.{i}. GPT-2's Conv1D stores weights as [in, out].
  modules = {'ln_1': 'ln_1', 'ln_2': 'ln_2', 'c_attn': 'attn.c_attn', 'c_proj': 'attn.c_proj',
             'c_fc': 'mlp.c_fc', 'mlp_c_proj': 'mlp.c_proj'}
  for i in range(cfg.num_layers):
    for ours, theirs in modules.items():
      is_ln = ours.startswith('ln_')
      table[(f'h_{i}', ours, 'scale' if is_ln else 'kernel')] = (f'h.{i}.{theirs}.weight', False)
      table[(f'h_{i}', ours, 'bias')] = (f'h.{i}.{theirs}.bias', False)
  table[('ln_f', 'scale')] = ('ln_f.weight', False)
  table[('ln_f', 'bias')] = ('ln_f.bias', False)
  return table


FAMILY = base.register_family(base.Family(
    name='gpt2', config_cls=GPT2Config, module_cls=GPT2Decoder,
    output_embedding=lambda params, cfg: params['wte']['embedding'].T,
    has_dropout=lambda cfg: max(cfg.embd_dropout, cfg.attn_dropout, cfg.resid_dropout) > 0,
    hf=base.HFSpec(model_types=('gpt2',), config_from_hf=_gpt2_config, name_table=hf_name_table,
                   tied_head=lambda cfg: 'wte.weight', default_prefix='transformer.',
                   buffers=(r'h\.\d+\.attn\.(?:bias|masked_bias)',))))
