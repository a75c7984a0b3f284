"""RMT baseline (Bulatov et al.): a forward-only writer behind GradMem's interface.

Segment 1 is [P(M); C; P(M)]; the new memory is the final hidden states at the trailing m
positions; READ is GradMem's READ ([read_start; P(M); read_end; qa]). "xK" reads the context K
times, each pass replacing the memory or adding to it (residual + layer norm).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from gradmem_jax.memory import ops
from gradmem_jax.memory.base import METHODS, Capabilities
from gradmem_jax.memory.config import MemoryConfig
from gradmem_jax.memory.prefix import PrefixMemory
from gradmem_jax.models import common

Array = jax.Array
Params = Any


@METHODS.register('rmt')
@dataclasses.dataclass(frozen=True)
class RMT(PrefixMemory):
  """Recurrent Memory Transformer writer: memory = final hidden states over [P(M); C; P(M)]."""
  # K at evaluation: more (or fewer) context passes.
  capabilities: ClassVar[Capabilities] = Capabilities(generate=True, k_extrapolation=True)

  @classmethod
  def validate_config(cls, cfg: MemoryConfig) -> None:
    if cfg.num_memory < 1:
      raise ValueError(f'memory.num_memory must be >= 1 for method=rmt, got {cfg.num_memory}')
    if cfg.K < 1:
      raise ValueError(f'memory.K must be >= 1 for method=rmt (context passes), got {cfg.K}')
    if cfg.mem_proj == 'per_sample':
      raise ValueError("memory.mem_proj='per_sample' needs a gradient WRITE that adapts the "
                       "projection; method=rmt allows memory.mem_proj in ['none', 'proj']")

  def identity(self) -> dict:
    c = self.cfg
    return {'method': c.method, 'K': c.K, 'num_memory': c.num_memory, 'rmt_update': c.rmt_update}

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
                           m + ops.pack_after(lengths, s, m)], axis=1)
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
        memory = ops.layer_norm(memory + new, n['scale'], n['bias'])
      else:
        memory = new
    stats = ops.norm_stats(memory, m0)
    return {'memory': memory}, stats
