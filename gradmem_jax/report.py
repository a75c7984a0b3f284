"""Tables (Markdown, CSV; mean and std over seeds) and figures (PNG) from finished runs."""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from typing import Iterable, Optional, Sequence

import numpy as np

# Per-run fields that identify a configuration (besides its overrides).
ID_FIELDS = ('method', 'n_pairs', 'K', 'grad_mode', 'num_memory', 'inner_lr', 'inner_optimizer')
METRICS = ('em', 'token_acc', 'target_loss')


def _metric(run: dict, name: str, which: str = 'best') -> Optional[float]:
  v = run.get(which, {}).get(name)
  return None if v is None else float(v)


def aggregate(runs: Sequence[dict], which: str = 'best') -> list[dict]:
  """Groups runs that differ only in seed; mean and std (population, ddof=0) over seeds."""
  groups: 'OrderedDict[tuple, list]' = OrderedDict()
  for r in runs:
    ov = {k: v for k, v in r.get('overrides', {}).items() if k != 'seed'}
    key = tuple((f, r.get(f)) for f in ID_FIELDS) + tuple(sorted((k, str(v)) for k, v in ov.items()))
    groups.setdefault(key, []).append(r)
  rows = []
  for key, members in groups.items():
    first = members[0]
    row = {f: first.get(f) for f in ID_FIELDS}
    row['memory_floats'] = first.get('memory_floats')
    row['write_flops_per_sample'] = first.get('write_flops_per_sample')
    row['seeds'] = len(members)
    for m in METRICS:
      vals = [v for v in (_metric(x, m, which) for x in members) if v is not None]
      row[f'{m}_mean'] = float(np.mean(vals)) if vals else None
      row[f'{m}_std'] = float(np.std(vals)) if len(vals) > 1 else (0.0 if vals else None)
    row['steps_mean'] = float(np.mean([x.get('steps', 0) for x in members]))
    row['wall_time_min_mean'] = float(np.mean([x.get('wall_time_s', 0) for x in members])) / 60
    row['slugs'] = [x.get('slug') for x in members]
    rows.append(row)
  return rows


def _fmt(col: str, v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return '-'
  if col.startswith(('em_', 'token_acc_')):
    return f'{100 * v:.2f}'
  if col == 'write_flops_per_sample':
    return f'{v / 1e6:.1f}M'
  if isinstance(v, float):
    return f'{v:.4g}'
  return str(v)


def columns_for(rows: Sequence[dict]) -> list[str]:
  """ID columns that vary (or matter), then metrics."""
  varying = [f for f in ID_FIELDS if len({str(r.get(f)) for r in rows}) > 1]
  cols = varying or ['method']
  return cols + ['seeds', 'em_mean', 'em_std', 'token_acc_mean', 'token_acc_std',
                 'steps_mean', 'wall_time_min_mean']


def markdown(rows: Sequence[dict], cols: Sequence[str]) -> str:
  head = '| ' + ' | '.join(c.replace('_mean', '').replace('em', 'EM') + (' (%)' if c.startswith(
      ('em_', 'token_acc_')) else '') for c in cols) + ' |'
  sep = '|' + '|'.join('---' for _ in cols) + '|'
  body = ['| ' + ' | '.join(_fmt(c, r.get(c)) for c in cols) + ' |' for r in rows]
  return '\n'.join([head, sep] + body)


def write_csv(rows: Sequence[dict], cols: Sequence[str], path: str) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in rows:
      w.writerow([r.get(c) for c in cols])


# ------------------------------------------------------------------------------------------------
# Figures.


def _series_label(row: dict, series: Sequence[str]) -> str:
  parts = []
  for s in series:
    v = row.get(s)
    parts.append(str(v) if s == 'method' else f'{s}={v}')
  return ', '.join(parts)


def plot_lines(rows: Sequence[dict], x: str, series: Sequence[str], path: str, *, title: str,
               xlabel: str, logx: bool = False) -> bool:
  """EM (mean, std error bars) against `x`, one line per combination of `series` fields."""
  pts = [r for r in rows if r.get(x) is not None and r.get('em_mean') is not None]
  if not pts:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lines: 'OrderedDict[str, list]' = OrderedDict()
  for r in pts:
    lines.setdefault(_series_label(r, series), []).append(r)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for label, rs in lines.items():
    rs = sorted(rs, key=lambda r: float(r[x]))
    xs = [float(r[x]) for r in rs]
    ax.errorbar(xs, [100 * r['em_mean'] for r in rs],
                yerr=[100 * (r['em_std'] or 0) for r in rs], marker='o', capsize=3, label=label)
  if logx:
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('exact match (%)')
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_k_extrapolation_runs(runs: Sequence[dict], path: str) -> bool:
  """EM and WRITE loss against K_eval for every run that has k_extrapolation.json (Fig. 4)."""
  runs = [r for r in runs if r.get('k_extrapolation')]
  if not runs:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
  for r in runs:
    ks = [p['K_eval'] for p in r['k_extrapolation']]
    label = f'{r["method"]} K_train={r["K"]} N={r["n_pairs"]}'
    a1.plot(ks, [100 * (p['em'] or 0) for p in r['k_extrapolation']], 'o-', label=label)
    a2.plot(ks, [p['write_loss'] if p['write_loss'] is not None else float('nan')
                 for p in r['k_extrapolation']], 'o-', label=label)
  a1.set(xlabel='K_eval', ylabel='exact match (%)', ylim=(-2, 102))
  a2.set(xlabel='K_eval', ylabel='WRITE loss at M_K')
  for a in (a1, a2):
    a.grid(alpha=0.3)
  a1.legend(fontsize=7)
  fig.suptitle('Test-time K extrapolation')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_method_bars(rows: Sequence[dict], path: str, *, title: str) -> bool:
  """One bar per (method, K, N): EM (mean, std), labelled with the memory floats it keeps."""
  pts = [r for r in rows if r.get('em_mean') is not None]
  if not pts:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(pts), 3.8))
  labels = [(f'{r["method"]}' + ('' if r['method'] == 'full_context' else f'\nK={r.get("K")}')
             + f'\nN={r.get("n_pairs")}') for r in pts]
  ems = [100 * r['em_mean'] for r in pts]
  bars = ax.bar(range(len(pts)), ems, yerr=[100 * (r.get('em_std') or 0) for r in pts],
                capsize=3, color=[f'C{i}' for i in range(len(pts))])
  for b, r, em in zip(bars, pts, ems):
    floats = r.get('memory_floats')
    inside = em > 25  # the label goes inside tall bars, above short ones
    ax.text(b.get_x() + b.get_width() / 2, em - 4 if inside else em + 3,
            f'{em:.1f}%' + (f'\n{int(floats)} floats' if floats else ''),
            ha='center', va='top' if inside else 'bottom', fontsize=8,
            color='white' if inside else 'black')
  ax.set_xticks(range(len(pts)), labels, fontsize=8)
  ax.set_ylabel('exact match (%)')
  ax.set_ylim(0, 110)
  ax.grid(alpha=0.3, axis='y')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


FIGURES = {
    # kind: (x field, series fields, x label, log x)
    'em_vs_n': ('n_pairs', ('method', 'K'), 'key-value pairs N', False),
    'em_vs_k': ('K', ('method', 'n_pairs'), 'WRITE steps K (training)', False),
    'em_vs_memory': ('num_memory', ('method', 'K'), 'memory vectors m', True),
    'em_vs_inner_lr': ('inner_lr', ('method', 'K'), 'inner learning rate', True),
    'em_vs_grad_mode': ('K', ('grad_mode', 'n_pairs'), 'WRITE steps K', False),
}


def make_report(runs: Sequence[dict], out_dir: str, figures: Iterable[str] = (),
                title: str = '') -> dict:
  """Writes report.md, report.csv and the figures; returns {'table': str, 'files': [...]}."""
  os.makedirs(out_dir, exist_ok=True)
  rows = aggregate(runs)
  cols = columns_for(rows)
  table = markdown(rows, cols)
  files = []
  md = os.path.join(out_dir, 'report.md')
  csv_path = os.path.join(out_dir, 'report.csv')
  write_csv(rows, cols + ['memory_floats', 'write_flops_per_sample', 'slugs'], csv_path)
  figs = list(figures) or ['em_vs_n', 'em_vs_k', 'em_vs_memory']
  for kind in figs:
    path = os.path.join(out_dir, f'{kind}.png')
    if kind == 'k_extrapolation':
      ok = plot_k_extrapolation_runs(runs, path)
    elif kind == 'em_by_method':
      ok = plot_method_bars(rows, path, title=title or kind)
    elif kind in FIGURES:
      x, series, xlabel, logx = FIGURES[kind]
      if len({r.get(x) for r in rows}) < 2:
        continue  # nothing varies along this axis
      ok = plot_lines(rows, x, series, path, title=title or kind, xlabel=xlabel, logx=logx)
    else:
      raise ValueError(f'unknown figure kind {kind!r}; allowed: {sorted(FIGURES) + ["em_by_method", "k_extrapolation"]}')
    if ok:
      files.append(path)
  with open(md, 'w') as f:
    f.write((f'# {title}\n\n' if title else '') + table + '\n')
    for p in files:
      f.write(f'\n![{os.path.basename(p)}]({os.path.basename(p)})\n')
  return {'table': table, 'rows': rows, 'files': [md, csv_path] + files}
