"""WRITE/READ methods (GradMem and baselines behind one interface) and the outer objective.

Every method exposes:
  init_params(rng) -> params
  write(params, context [B, S], context_mask [B, S], *, rng, deterministic, K) -> (state, stats)
  read_logits(params, state, qa [B, Q], *, rng, deterministic) -> logits [B, Q, V]
so the runner, metrics, checkpoints and sweeps are shared.

A batch is a dict of int32 arrays, right-padded:
  context [B, S], context_mask [B, S]  (1 = real token)
  qa [B, Q]                            (query + target tokens, teacher forced)
  target_mask [B, Q]                   (1 = target token carrying loss; all 0 = padding sample)
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from gradmem_jax.memory import losses
from gradmem_jax.memory.baselines import RMT, FullContext, pack_after
from gradmem_jax.memory.config import MemoryConfig, memory_config_from
from gradmem_jax.memory.gradmem import GradMem, PrefixMemory
from gradmem_jax.models import Backbone

Array = jax.Array
BATCH_KEYS = ('context', 'context_mask', 'qa', 'target_mask')


def build_method(backbone: Backbone, mem_cfg: MemoryConfig):
  mem_cfg.validate()
  cls = {'gradmem': GradMem, 'rmt': RMT, 'full_context': FullContext}[mem_cfg.method]
  return cls(backbone, mem_cfg)


def forward(method, params, batch: dict, *, rng: Optional[Array] = None, train: bool = False,
            K: Optional[int] = None):
  """WRITE the batch's contexts, READ its query+target teacher-forced. -> (logits, state, stats)."""
  k_write = k_read = None
  if rng is not None:
    k_write, k_read = jax.random.split(rng)
  state, stats = method.write(params, batch['context'], batch['context_mask'], rng=k_write,
                              deterministic=not train, K=K)
  logits = method.read_logits(params, state, batch['qa'], rng=k_read, deterministic=not train)
  return logits, state, stats


def sample_weight(batch: dict) -> Array:
  """1.0 for real samples, 0.0 for padding samples (no target tokens)."""
  return jnp.any(batch['target_mask'] > 0, axis=1).astype(jnp.float32)


def stat_sums(stats: dict, weight: Array) -> dict:
  """Inner-loop statistics summed over (real) samples; per-step vectors stay per step."""
  out = {}
  for name, v in stats.items():
    w = weight.reshape((-1,) + (1,) * (v.ndim - 1))
    out[name] = jnp.sum(v * w, axis=0)
  return out


def outer_loss(method, params, batch: dict, *, rng: Optional[Array], train: bool,
               n_target: Array, n_samples: Array, inner_loss_weight: float = 0.0,
               ignore_ids: Sequence[int] = (), K: Optional[int] = None):
  """The meta-training objective and its metrics (as sums, normalised by global counts).

  loss = sum of target-token CE / n_target + lambda * sum of WRITE losses at M_{K-1} / n_samples.
  Passing the global counts makes micro-batches and data-parallel shards add up to the full batch.
  """
  logits, _, stats = forward(method, params, batch, rng=rng, train=train, K=K)
  sums = losses.read_metrics(logits, batch['qa'], batch['target_mask'], ignore_ids)
  weight = sample_weight(batch)
  loss = sums['ce_sum'] / n_target
  if inner_loss_weight and 'write_loss' in stats and stats['write_loss'].shape[1]:
    inner = jnp.sum(stats['write_loss'][:, -1] * weight)
    loss = loss + inner_loss_weight * inner / n_samples
  sums['n_weight'] = jnp.sum(weight)
  sums.update({f'inner/{k}': v for k, v in stat_sums(stats, weight).items()})
  return loss, sums


__all__ = ['GradMem', 'RMT', 'FullContext', 'PrefixMemory', 'MemoryConfig', 'memory_config_from',
           'build_method', 'forward', 'outer_loss', 'losses', 'pack_after', 'BATCH_KEYS',
           'sample_weight', 'stat_sums']
