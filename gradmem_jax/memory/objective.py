"""The meta-training objective and evaluation sums, shared by every method (pure functions)."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from gradmem_jax.memory import losses

Array = jax.Array


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


def eval_sums(method, params, batch: dict, *, ignore_ids: Sequence[int] = (),
              K: Optional[int] = None) -> dict:
  """Teacher-forced READ metrics and inner-loop statistics of one evaluation batch, as sums."""
  logits, state, stats = forward(method, params, batch, K=K)
  sums = losses.read_metrics(logits, batch['qa'], batch['target_mask'], ignore_ids)
  if method.capabilities.write_loss:
    stats = dict(stats, final_write_loss=method.final_write_loss(
        params, state, batch['context'], batch['context_mask']))
  weight = sample_weight(batch)
  sums.update({f'inner/{k}': v for k, v in stat_sums(stats, weight).items()})
  sums['n_weight'] = jnp.sum(weight)
  return sums
