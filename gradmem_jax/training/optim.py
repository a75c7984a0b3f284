"""The outer optimizer: AdamW with global-norm clipping and linear warmup (SPEC §7).

With a frozen backbone (memory.freeze_backbone) the backbone subtree gets `optax.set_to_zero`
(no update, not even weight decay, and no Adam moments); clipping and AdamW see the rest.
"""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(optim_cfg, max_steps: int) -> optax.Schedule:
  warmup = int(optim_cfg.warmup_steps)
  peak = float(optim_cfg.lr)
  if optim_cfg.schedule == 'constant':
    after = optax.constant_schedule(peak)
  else:  # cosine to zero at max_steps
    after = optax.cosine_decay_schedule(peak, max(int(max_steps) - warmup, 1))
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), after], boundaries=[warmup])


def param_labels(params, frozen: tuple[str, ...] = ('backbone',)):
  """'frozen' for every leaf under a top-level key in `frozen`, else 'train'."""
  return {k: jax.tree_util.tree_map(lambda _, k=k: 'frozen' if k in frozen else 'train', v)
          for k, v in params.items()}


def make_optimizer(optim_cfg, max_steps: int,
                   freeze_backbone: bool = False) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, max_steps)
  parts = []
  if optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay))
  opt = optax.chain(*parts)
  if not freeze_backbone:
    return opt
  return optax.multi_transform({'train': opt, 'frozen': optax.set_to_zero()}, param_labels)
