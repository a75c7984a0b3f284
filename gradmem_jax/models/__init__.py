"""Decoders that take input embeddings, behind one small functional interface (`Backbone`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from gradmem_jax.models.gpt2 import GPT2Config, GPT2Decoder
from gradmem_jax.models.llama import LlamaConfig, LlamaDecoder

Array = jax.Array
Params = Any
MODEL_KINDS = ('llama', 'gpt2')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """Pure functions over a decoder's parameter pytree (the Flax module only builds the network)."""
  kind: str
  cfg: Union[LlamaConfig, GPT2Config]

  @property
  def module(self):
    return LlamaDecoder(self.cfg) if self.kind == 'llama' else GPT2Decoder(self.cfg)

  @property
  def hidden_size(self) -> int:
    return self.cfg.hidden_size

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  @property
  def has_dropout(self) -> bool:
    return self.kind == 'gpt2' and max(self.cfg.embd_dropout, self.cfg.attn_dropout,
                                       self.cfg.resid_dropout) > 0

  def init(self, rng: Array) -> Params:
    ids = jnp.zeros((1, 2), jnp.int32)
    return self.module.init(rng, ids, jnp.arange(2), method='init_graph')['params']

  def embed(self, params: Params, ids: Array) -> Array:
    return self.module.apply({'params': params}, ids, method='embed')

  def hidden(self, params: Params, embeds: Array, positions: Array, *,
             deterministic: bool = True, rng: Optional[Array] = None) -> Array:
    """Final hidden states [B, T, d] for input embeddings [B, T, d]."""
    use_dropout = self.has_dropout and not deterministic
    if use_dropout and rng is None:
      raise ValueError('training with dropout needs an rng')
    rngs = {'dropout': rng} if use_dropout else None
    return self.module.apply({'params': params}, embeds, positions, not use_dropout, rngs=rngs)

  def logits(self, params: Params, hidden: Array) -> Array:
    return self.module.apply({'params': params}, hidden, method='logits')

  def output_embedding(self, params: Params) -> Array:
    """The output projection as [d, vocab] (initial value of a write head)."""
    if self.kind == 'gpt2':
      return params['wte']['embedding'].T
    if self.cfg.tie_embeddings:
      return params['embed_tokens']['embedding'].T
    return params['lm_head']['kernel']


def backbone_from_config(model_cfg) -> Backbone:
  """Builds a Backbone from the `config.model` section (an ml_collections.ConfigDict or dict)."""
  m = dict(model_cfg)
  kind = m.pop('kind', 'llama')
  m.pop('hf_checkpoint', None)
  if kind not in MODEL_KINDS:
    raise ValueError(f'model.kind={kind!r} is not known; allowed: {list(MODEL_KINDS)}')
  cls = LlamaConfig if kind == 'llama' else GPT2Config
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(m) - fields)
  if unknown:
    raise ValueError(f'model.{unknown[0]} is not a field of a {kind} model; allowed: {sorted(fields)}')
  if m.get('rope_scaling'):
    m['rope_scaling'] = tuple(sorted(dict(m['rope_scaling']).items()))
  elif 'rope_scaling' in m:
    m['rope_scaling'] = None
  cfg = cls(**m)
  cfg.validate()
  return Backbone(kind, cfg)


__all__ = ['Backbone', 'backbone_from_config', 'LlamaConfig', 'GPT2Config', 'LlamaDecoder',
           'GPT2Decoder', 'MODEL_KINDS']
