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
                 aliases: Optional[dict] = None, checkpoint: Optional[str] = None,
                 generate: bool = False, predictions_dir: Optional[str] = None) -> list[dict]:
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
    rows.append({'K_eval': K, 'K_train': exp.mem_cfg.K, 'n_pairs': getattr(exp.task.cfg, 'n_pairs', None),
                 'method': exp.mem_cfg.method, 'checkpoint_step': meta.get('step'),
                 'em': ev.get('em'), 'token_acc': ev.get('token_acc'),
                 'target_loss': ev.get('target_loss'),
                 'write_loss': ev.get('inner/final_write_loss'),
                 'write_loss_steps': ev.get('inner/write_loss')})
    rows[-1]['task'] = config.data.get('task', 'kv')
    if generate:
      summary, preds = generation_scores(exp, params, K, batch_size=config.eval.batch_size)
      rows[-1].update(gen_em=summary['gen_em'], gen_f1=summary['gen_f1'])
      if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
        with open(os.path.join(predictions_dir, f'predictions_K{K}.jsonl'), 'w') as f:
          for r in preds:
            f.write(json.dumps(r) + '\n')
  return rows


def generation_scores(exp, params, K: int, batch_size: int = 64,
                      max_samples: int = 0) -> tuple[dict, list[dict]]:
  """Greedy answers generated from memory for the validation set, scored as text with the official
  SQuAD normalisation: ({'gen_em', 'gen_f1', 'n'}, one row per question with the prediction)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gradmem_jax.data.squad import exact_match, f1_score

  if exp.mem_cfg.method == 'full_context':
    raise ValueError('generation-based evaluation needs a memory method (gradmem, rmt); the '
                     'full-context baseline is scored teacher-forced only')
  task, method = exp.task, exp.method
  write = jax.jit(lambda p, c, m: method.write(p, c, m, K=K)[0])
  gen = jax.jit(lambda p, st, q, ql: method.generate(
      p, st, q, ql, max_new_tokens=task.max_new_tokens, stop_ids=task.stop_ids,
      pad_id=task.pad_id))
  val = task.validation_set()
  if max_samples:
    val = val[:max_samples]
  rows = []
  for start in range(0, len(val), batch_size):
    chunk = val[start:start + batch_size]
    batch = task.collate(chunk, batch_size=batch_size)
    state = write(params, jnp.asarray(batch['context']), jnp.asarray(batch['context_mask']))
    plen = max(len(s.query) for s in val)
    prompt = np.full((batch_size, plen), task.pad_id, np.int32)
    lens = np.ones((batch_size,), np.int32)
    for i, s in enumerate(chunk):
      prompt[i, :len(s.query)] = s.query
      lens[i] = len(s.query)
    out = np.asarray(gen(params, state, jnp.asarray(prompt), jnp.asarray(lens)))
    for i, s in enumerate(chunk):
      ids = out[i].tolist()
      stop = next((j for j, t in enumerate(ids) if t in task.stop_ids), len(ids))
      pred = task.tokenizer.decode(ids[:stop]).strip()
      truths = list(getattr(s, 'answers', ())) or [task.tokenizer.decode(s.target).strip()]
      rows.append({'id': getattr(s, 'qid', start + i), 'prediction': pred, 'answers': truths,
                   'em': exact_match(pred, truths), 'f1': f1_score(pred, truths)})
  n = len(rows)
  summary = {'gen_em': sum(r['em'] for r in rows) / n, 'gen_f1': sum(r['f1'] for r in rows) / n,
             'n': n}
  return summary, rows


def markdown_table(rows: Sequence[dict], columns: Sequence[str],
                   percent: Sequence[str] = ('em', 'token_acc', 'gen_em', 'gen_f1')) -> str:
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
