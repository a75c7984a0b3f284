"""Full-context baseline (upper bound): no memory; READ runs the decoder on [C; qa] with C's
padding moved out of the way, so the first qa token follows the last real context token."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from gradmem_jax.memory import ops
from gradmem_jax.memory.base import METHODS, Capabilities
from gradmem_jax.memory.config import MemoryConfig
from gradmem_jax.models import Backbone

Array = jax.Array
Params = Any


@METHODS.register('full_context')
@dataclasses.dataclass(frozen=True)
class FullContext:
  """The decoder reads [C; qa] directly: no memory, the KV cache of C is the 'memory'."""
  backbone: Backbone
  cfg: MemoryConfig
  capabilities: ClassVar[Capabilities] = Capabilities(memory=False, generate=True)

  @classmethod
  def validate_config(cls, cfg: MemoryConfig) -> None:
    del cfg  # nothing of memory.* is used

  def init_params(self, rng: Array, backbone_params: Optional[Params] = None) -> Params:
    k_bb, _ = jax.random.split(rng)  # the same key split as the prefix-memory methods
    bb = self.backbone.init(k_bb) if backbone_params is None else backbone_params
    return {'backbone': bb, 'memory': {}}

  def memory_floats(self, context_len: int) -> int:
    """What the decoder holds after reading the context: a transformer's KV cache (keys and
    values of every layer), a recurrent family's state."""
    return self.backbone.context_floats(context_len)

  def identity(self) -> dict:
    return {'method': self.cfg.method}

  def for_evaluation(self, K: Optional[int]) -> 'FullContext':
    return self

  def write(self, params: Params, context: Array, context_mask: Array, *,
            rng: Optional[Array] = None, deterministic: bool = True,
            K: Optional[int] = None) -> tuple[dict, dict]:
    del params, rng, deterministic, K
    return {'context': context, 'context_mask': context_mask}, {}

  def read_logits(self, params: Params, state: dict, qa: Array, *,
                  rng: Optional[Array] = None, deterministic: bool = True) -> Array:
    bb = params['backbone']
    context, mask = state['context'], state['context_mask']
    b, s = context.shape
    q = qa.shape[1]
    lengths = jnp.sum(mask.astype(jnp.int32), axis=1)
    ids = jnp.concatenate([context, qa], axis=1)
    ids = jnp.take_along_axis(ids, ops.pack_after(lengths, s, q), axis=1)[:, :-1]
    h = self.backbone.hidden(bb, self.backbone.embed(bb, ids), jnp.arange(s + q - 1),
                             deterministic=deterministic, rng=rng)
    # Position len-1+j predicts qa[j] (the last context token predicts qa[0]).
    pos = jnp.maximum(lengths[:, None] - 1 + jnp.arange(q)[None, :], 0)
    h = jnp.take_along_axis(h, pos[..., None], axis=1)
    return self.backbone.logits(bb, h)

  def generate(self, params: Params, state: dict, prompt: Array, prompt_len: Array, *,
               max_new_tokens: int, stop_ids: tuple[int, ...] = (), pad_id: int = 0) -> Array:
    """Greedy answers read from the whole context (prompt [B, P] right-padded, prompt_len [B]),
    as the memory methods generate from their memory: ops.greedy_generate over read_logits."""
    rows = jnp.arange(prompt.shape[0])
    next_logits = lambda buf, t: self.read_logits(params, state, buf)[rows, t]
    return ops.greedy_generate(next_logits, prompt, prompt_len, max_new_tokens=max_new_tokens,
                               stop_ids=stop_ids, pad_id=pad_id)
