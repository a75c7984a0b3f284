"""Baselines behind GradMem's write/read interface: RMT (forward-only writer) and full context.

RMT (Bulatov et al.): segment 1 is [P(M); C; P(M)]; the new memory is the final hidden states at
the trailing m positions; READ is GradMem's READ ([read_start; P(M); read_end; qa]). "xK" reads the
context K times, each pass replacing the memory or adding to it (residual + layer norm).

Full context (upper bound): no memory; READ runs the decoder on [C; qa] with C's padding moved
out of the way, so the first qa token follows the last real context token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gradmem_jax.memory.gradmem import PrefixMemory, _safe_sqrt, _tree_sq_norm_per_sample
from gradmem_jax.models import common

Array = jax.Array
Params = Any


def pack_after(lengths: Array, first_len: int, second_len: int) -> Array:
  """Gather indices [B, first_len + second_len] that move a second block right after the real
  prefix of a right-padded first block: source layout [first (padded); second], result
  [first[:len]; second; first's padding]."""
  j = jnp.arange(first_len + second_len)[None, :]
  n = lengths[:, None]
  return jnp.where(j < n, j, jnp.where(j < n + second_len, first_len + (j - n), j - second_len))


def _layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


@dataclasses.dataclass(frozen=True)
class RMT(PrefixMemory):
  """Recurrent Memory Transformer writer: memory = final hidden states over [P(M); C; P(M)]."""

  def init_memory_params(self, rng: Array, backbone_params: Params) -> dict:
    p = super().init_memory_params(rng, backbone_params)
    if self.cfg.rmt_update == 'residual':
      d = self.backbone.hidden_size
      p['rmt_norm'] = {'scale': jnp.ones((d,), jnp.float32), 'bias': jnp.zeros((d,), jnp.float32)}
    return p

  def write(self, params: Params, context: Array, context_mask: Array, *,
            rng: Optional[Array] = None, deterministic: bool = True,
            K: Optional[int] = None) -> tuple[dict, dict]:
    cfg = self.cfg
    K = cfg.K if K is None else K
    if K < 1:
      raise ValueError(f'RMT needs K >= 1 context passes, got {K}')
    bb = params['backbone']
    b, s = context.shape
    m = cfg.num_memory
    lengths = jnp.sum(context_mask.astype(jnp.int32), axis=1)
    ctx = self.backbone.embed(bb, context)
    # Source [P(M); C (padded); P(M)] -> [P(M); C[:len]; P(M); pad]: trailing memory after the text.
    idx = jnp.concatenate([jnp.broadcast_to(jnp.arange(m), (b, m)),
                           m + pack_after(lengths, s, m)], axis=1)
    mem_pos = m + lengths[:, None] + jnp.arange(m)[None, :]  # where the trailing memory sits
    rows = jnp.arange(b)[:, None]
    memory = jnp.broadcast_to(params['memory']['mem_init'], (b, m, self.backbone.hidden_size))
    m0 = memory
    proj = params['memory'].get('mem_proj')
    for k in range(K):
      pm = self.project(params, proj, memory).astype(ctx.dtype)
      src = jnp.concatenate([pm, ctx, pm], axis=1)
      x = jnp.take_along_axis(src, idx[..., None], axis=1)
      step_rng = None if rng is None else jax.random.fold_in(rng, k)
      h = self.backbone.hidden(bb, x, jnp.arange(x.shape[1]), deterministic=deterministic,
                               rng=step_rng)
      new = common.at_least_f32(h[rows, mem_pos])
      if cfg.rmt_update == 'residual':
        n = params['memory']['rmt_norm']
        memory = _layer_norm(memory + new, n['scale'], n['bias'])
      else:
        memory = new
    stats = {'delta_norm': _safe_sqrt(_tree_sq_norm_per_sample(memory - m0)),
             'mem_norm': _safe_sqrt(_tree_sq_norm_per_sample(memory))}
    return {'memory': memory}, stats


@dataclasses.dataclass(frozen=True)
class FullContext(PrefixMemory):
  """The decoder reads [C; qa] directly: no memory, the KV cache of C is the 'memory'."""

  def init_memory_params(self, rng: Array, backbone_params: Params) -> dict:
    return {}

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
    ids = jnp.take_along_axis(ids, pack_after(lengths, s, q), axis=1)[:, :-1]
    h = self.backbone.hidden(bb, self.backbone.embed(bb, ids), jnp.arange(s + q - 1),
                             deterministic=deterministic, rng=rng)
    # Position len-1+j predicts qa[j] (the last context token predicts qa[0]).
    pos = jnp.maximum(lengths[:, None] - 1 + jnp.arange(q)[None, :], 0)
    h = jnp.take_along_axis(h, pos[..., None], axis=1)
    return self.backbone.logits(bb, h)

  def generate(self, *args, **kwargs):
    raise NotImplementedError('generation is implemented for memory methods (gradmem, rmt)')
