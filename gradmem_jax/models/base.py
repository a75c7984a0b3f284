"""Backbone families behind one functional interface.

A family (llama, gpt2, ...) registers itself in `FAMILIES` from its own module with a `Family`:
its config dataclass, its Flax module, where its output embedding lives, whether it has dropout,
and its Hugging Face name table (`HFSpec`). `Backbone` is the pure-function view of one decoder
that the memory methods use; `backbone_from_config` builds it from `config.model`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from gradmem_jax.registry import Registry, from_section

Array = jax.Array
Params = Any
HFName = tuple[str, bool]  # (tensor name without the base-model prefix, transpose?)


@dataclasses.dataclass(frozen=True)
class HFSpec:
  """How a family maps to Hugging Face checkpoints (config.json + *.safetensors)."""
  model_types: tuple[str, ...]                         # config.json model_type values
  config_from_hf: Callable[[Mapping[str, Any]], dict]  # config.json -> our config.model dict
  name_table: Callable[[Any], dict[tuple[str, ...], HFName]]  # cfg -> our path -> HF name
  tied_head: Callable[[Any], Optional[str]]            # cfg -> the tensor lm_head must equal
  default_prefix: str                                  # base model prefix, e.g. 'model.'
  buffers: tuple[str, ...] = ()                        # regexes: non-parameter tensors to ignore


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_cls: type
  module_cls: type
  output_embedding: Callable[[Params, Any], Array]  # (params, cfg) -> [d, vocab]
  has_dropout: Callable[[Any], bool] = lambda cfg: False
  hf: Optional[HFSpec] = None
  # (cfg, context length) -> floats the decoder holds after reading a context: None = a KV cache
  # (keys and values of every layer); a recurrent family's fixed-size state otherwise.
  context_floats: Optional[Callable[[Any, int], int]] = None


FAMILIES: Registry[Family] = Registry('backbone family', 'model.kind')
DEFAULT_KIND = 'llama'  # the family of a config.model without a kind


def register_family(family: Family) -> Family:
  return FAMILIES.register(family.name, family)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """Pure functions over a decoder's parameter pytree (the Flax module only builds the network)."""
  kind: str
  cfg: Any

  @property
  def family(self) -> Family:
    return FAMILIES.get(self.kind)

  @property
  def module(self):
    return self.family.module_cls(self.cfg)

  @property
  def hidden_size(self) -> int:
    return self.cfg.hidden_size

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  @property
  def num_layers(self) -> int:
    return self.cfg.num_layers

  @property
  def has_dropout(self) -> bool:
    return self.family.has_dropout(self.cfg)

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

  def context_floats(self, context_len: int) -> int:
    """Floats the decoder holds after reading `context_len` tokens (full-context baseline)."""
    if self.family.context_floats is not None:
      return self.family.context_floats(self.cfg, context_len)
    # A KV cache: keys and values of every layer, for the key/value heads (grouped-query
    # attention keeps fewer than the query heads).
    kv = getattr(self.cfg, 'num_kv_heads', None) or getattr(self.cfg, 'num_heads', None)
    width = kv * self.cfg.dh if kv and hasattr(self.cfg, 'dh') else self.hidden_size
    return 2 * self.num_layers * context_len * width

  def output_embedding(self, params: Params) -> Array:
    """The output projection as [d, vocab] (initial value of a write head)."""
    return self.family.output_embedding(params, self.cfg)


def backbone_from_config(model_cfg) -> Backbone:
  """Builds a Backbone from the `config.model` section (an ml_collections.ConfigDict or dict)."""
  m = dict(model_cfg)
  kind = m.pop('kind', DEFAULT_KIND)
  m.pop('hf_checkpoint', None)
  m.pop('pretrained', None)
  family = FAMILIES.get(kind)
  if m.get('rope_scaling'):
    m['rope_scaling'] = tuple(sorted(dict(m['rope_scaling']).items()))
  elif 'rope_scaling' in m:
    m['rope_scaling'] = None
  cfg = from_section(family.config_cls, m, 'model', f'a {kind} model')
  return Backbone(kind, cfg)
