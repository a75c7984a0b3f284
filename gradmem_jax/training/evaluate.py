"""Evaluation-only runs: load a trained run and evaluate it with any K_eval (test-time K
extrapolation, SPEC §2), with tables and a PNG figure."""
from __future__ import annotations

import csv
import json
import os
from typing import Optional, Sequence

import ml_collections

from gradmem_jax import config_lib
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training.train import Evaluator, abstract_state, build_experiment


def load_run_config(workdir: str, overrides: Optional[str] = None,
                    aliases: Optional[dict] = None) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for token in [t for t in (overrides or '').split(',') if t.strip()]:
    if '=' not in token:
      raise ValueError(f'override {token!r} must be key=value')
    k, v = token.split('=', 1)
    config_lib.set_override(config, k.strip(), v.strip(), aliases)
  config_lib.validate_config(config)
  return config


def evaluate_run(workdir: str, K_list: Sequence[int], overrides: Optional[str] = None,
                 aliases: Optional[dict] = None, checkpoint: Optional[str] = None) -> list[dict]:
  """Rows {K_eval, em, token_acc, target_loss, write_loss (at M_K), ...} for each K_eval."""
  config = load_run_config(workdir, overrides, aliases)
  exp = build_experiment(config)
  abstract, _ = abstract_state(exp)
  params, meta = load_params(checkpoint or workdir, abstract['params'])
  evaluator = Evaluator(exp)
  rows = []
  for K in K_list:
    if K < 0:
      raise ValueError(f'K_eval must be >= 0, got {K}')
    if exp.mem_cfg.method == 'full_context':
      K = exp.mem_cfg.K
    ev = evaluator(params, K)
    rows.append({'K_eval': K, 'K_train': exp.mem_cfg.K, 'n_pairs': exp.task.cfg.n_pairs,
                 'method': exp.mem_cfg.method, 'checkpoint_step': meta.get('step'),
                 'em': ev.get('em'), 'token_acc': ev.get('token_acc'),
                 'target_loss': ev.get('target_loss'),
                 'write_loss': ev.get('inner/final_write_loss'),
                 'write_loss_steps': ev.get('inner/write_loss')})
  return rows


def markdown_table(rows: Sequence[dict], columns: Sequence[str],
                   percent: Sequence[str] = ('em', 'token_acc')) -> str:
  def fmt(c, v):
    if v is None:
      return '-'
    if c in percent:
      return f'{100 * v:.2f}'
    if isinstance(v, float):
      return f'{v:.4g}' if abs(v) >= 1e4 else f'{v:.4f}'
    return str(v)
  head = '| ' + ' | '.join(c + (' (%)' if c in percent else '') for c in columns) + ' |'
  sep = '|' + '|'.join('---' for _ in columns) + '|'
  body = ['| ' + ' | '.join(fmt(c, r.get(c)) for c in columns) + ' |' for r in rows]
  return '\n'.join([head, sep] + body)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore')
    w.writeheader()
    for r in rows:
      w.writerow({c: r.get(c) for c in columns})


def plot_k_extrapolation(rows: Sequence[dict], path: str, title: str = '') -> None:
  """EM and WRITE loss against K_eval (paper Fig. 4); the training K is marked."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  ks = [r['K_eval'] for r in rows]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
  a1.plot(ks, [100 * (r['em'] or 0) for r in rows], 'o-')
  a1.set_xlabel('K_eval (WRITE steps at test time)')
  a1.set_ylabel('exact match (%)')
  a1.set_ylim(0, 101)
  wl = [r['write_loss'] for r in rows]
  if any(w is not None for w in wl):
    a2.plot(ks, [w if w is not None else float('nan') for w in wl], 'o-', color='C1')
  a2.set_xlabel('K_eval')
  a2.set_ylabel('WRITE loss at M_K')
  k_train = rows[0].get('K_train') if rows else None
  for ax in (a1, a2):
    if k_train is not None:
      ax.axvline(k_train, color='gray', ls='--', lw=1, label=f'K_train={k_train}')
    ax.grid(alpha=0.3)
  a1.legend(loc='lower right')
  fig.suptitle(title or 'Test-time K extrapolation')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
