"""Evaluation-only runs: load a trained run and evaluate it with any K_eval (test-time K
extrapolation, SPEC §2) and any evaluators, with tables and a PNG figure (gradmem_jax/report.py)."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import ml_collections

from gradmem_jax import config_lib
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training.evaluators import build_evaluators
from gradmem_jax.training.experiment import abstract_state, build_experiment


def load_run_config(workdir: str, overrides: Optional[str] = None) -> ml_collections.ConfigDict:
  """A run's config.json with `key=value,...` overrides (dotted keys or the run's aliases)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  aliases = config.get('aliases') or {}
  for token in [t for t in (overrides or '').split(',') if t.strip()]:
    if '=' not in token:
      raise ValueError(f'override {token!r} must be key=value')
    k, v = token.split('=', 1)
    config_lib.set_override(config, k.strip(), v.strip(), dict(aliases))
  config_lib.validate_config(config)
  return config


def _steps_in(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def resolve_checkpoint(workdir: str, checkpoint: Optional[str] = None,
                       step: Optional[str] = None) -> str:
  """The checkpoint path to evaluate. `checkpoint`: a workdir, `<workdir>/best`,
  `<workdir>/checkpoints` or one step directory (default: `workdir`). `step`: None (the best,
  else the latest), 'best', 'latest', or a step number (a kept resumable checkpoint, else the best
  checkpoint if it is that step)."""
  base = os.path.abspath(checkpoint or workdir)
  if step is None or str(step) == '':
    return base
  step = str(step).strip()
  name = os.path.basename(base)
  if name in ('best', 'checkpoints'):
    managers = {name: base}
  else:
    managers = {m: os.path.join(base, m) for m in ('checkpoints', 'best')}
  if step in ('best', 'latest'):
    which = 'best' if step == 'best' else 'checkpoints'
    if which not in managers or not _steps_in(managers[which]):
      raise FileNotFoundError(f'--step={step}: no checkpoint under {managers.get(which, base)}')
    return managers[which]
  if not step.isdigit():
    raise ValueError(f"--step={step!r}: expected a step number, 'best' or 'latest'")
  for directory in managers.values():
    if int(step) in _steps_in(directory):
      return os.path.join(directory, step)
  available = {m: _steps_in(d) for m, d in managers.items()}
  raise FileNotFoundError(f'--step={step}: no checkpoint of step {step} under {base} '
                          f'(kept: {available})')


def evaluate_run(workdir: str, K_list: Sequence[int], overrides: Optional[str] = None,
                 checkpoint: Optional[str] = None, evaluators: Optional[Sequence[str]] = None,
                 predictions_dir: Optional[str] = None, step: Optional[str] = None) -> list[dict]:
  """One row per K_eval: the run's identity, K_eval, every evaluator's metrics and the WRITE loss
  at M_K. Methods without test-time K evaluate once with their own K. `checkpoint` and `step`
  pick the parameters (resolve_checkpoint)."""
  config = load_run_config(workdir, overrides)
  exp = build_experiment(config)
  abstract, _ = abstract_state(exp)
  params, meta = load_params(resolve_checkpoint(workdir, checkpoint, step), abstract['params'])
  evs = build_evaluators(exp, evaluators)
  if not exp.method.capabilities.k_extrapolation:
    K_list = [exp.mem_cfg.K]
  rows = []
  for K in K_list:
    if K < 0:
      raise ValueError(f'K_eval must be >= 0, got {K}')
    row = {**exp.identity(), 'identity_fields': list(exp.identity()), 'K_eval': K,
           'K_train': exp.mem_cfg.K, 'checkpoint_step': meta.get('step')}
    for name, ev in evs.items():
      out = ev(params, K)
      row.update(out)
      if predictions_dir and getattr(ev, 'predictions', None):
        os.makedirs(predictions_dir, exist_ok=True)
        with open(os.path.join(predictions_dir, f'predictions_K{K}.jsonl'), 'w') as f:
          for r in ev.predictions[K]:
            f.write(json.dumps(r) + '\n')
    row['write_loss'] = row.pop('inner/final_write_loss', None)
    row['write_loss_steps'] = row.get('inner/write_loss')
    rows.append(row)
  return rows
