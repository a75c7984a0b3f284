"""Cross-entropy, the outer objective's pieces and READ metrics (pure functions on arrays)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def token_ce(logits: Array, labels: Array) -> Array:
  """Per-token cross-entropy [..., T] from logits [..., T, V] (float32)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_mean_per_sample(values: Array, mask: Array) -> Array:
  """Mean of values [B, T] over mask [B, T] per sample; 0 for a sample with no real tokens."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def score_mask(labels: Array, target_mask: Array, ignore_ids: Sequence[int] = ()) -> Array:
  """Target tokens that count for exact match / token accuracy (task-specific ignored ids out)."""
  keep = target_mask.astype(bool)
  for i in ignore_ids:
    keep = keep & (labels != i)
  return keep


def read_metrics(logits: Array, labels: Array, target_mask: Array,
                 ignore_ids: Sequence[int] = ()) -> dict[str, Array]:
  """Teacher-forced READ metrics as sums (so they add up across batches and devices).

  Returns per-batch sums: `ce_sum` and `n_target` over target tokens; `correct` and `n_scored`
  over scored tokens; `em_sum` (samples with every scored token right) and `n_samples` (samples
  with at least one scored token).
  """
  ce = token_ce(logits, labels)
  tmask = target_mask.astype(jnp.float32)
  smask = score_mask(labels, target_mask, ignore_ids)
  right = (jnp.argmax(logits, axis=-1) == labels) & smask
  n_scored_per = jnp.sum(smask, axis=-1)
  has_scored = n_scored_per > 0
  exact = (jnp.sum(right, axis=-1) == n_scored_per) & has_scored
  return {
      'ce_sum': jnp.sum(ce * tmask),
      'n_target': jnp.sum(tmask),
      'correct': jnp.sum(right).astype(jnp.float32),
      'n_scored': jnp.sum(smask).astype(jnp.float32),
      'em_sum': jnp.sum(exact).astype(jnp.float32),
      'n_samples': jnp.sum(has_scored).astype(jnp.float32),
  }


def summarize(sums: dict[str, Array]) -> dict[str, float]:
  """Turns summed metrics into rates (em, token_acc, target_loss)."""
  out = {}
  n_t = float(sums.get('n_target', 0))
  if n_t:
    out['target_loss'] = float(sums['ce_sum']) / n_t
  n_s = float(sums.get('n_scored', 0))
  if n_s:
    out['token_acc'] = float(sums['correct']) / n_s
  n = float(sums.get('n_samples', 0))
  if n:
    out['em'] = float(sums['em_sum']) / n
  return out
