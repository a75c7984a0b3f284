"""Tables (Markdown, CSV; mean and std over seeds) and figures (PNG) from finished runs.

Runs are identified by the fields their results.json lists in `identity_fields` (the task's and
the method's identity: the task's name and size, the method's name and K, ...); nothing here
names a task or a method.

Figure kinds: `em_vs:FIELD` (EM against an identity field, one line per combination of the other
varying fields), `em_by_method` (one bar per configuration), `k_extrapolation` (EM and WRITE loss
against K_eval for runs evaluated with several K).
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from typing import Iterable, Optional, Sequence

import numpy as np

METRICS = ('em', 'token_acc', 'target_loss')
PERCENT = ('em', 'token_acc', 'gen_em', 'gen_f1')


# An identity field that a run leaves out when it has its default value: a run on the default
# Llama-style decoder names no backbone (and runs from before the field existed have none).
# models.base.DEFAULT_KIND, restated so that the report tools import no JAX (a test checks).
DEFAULT_BACKBONE = 'llama'
IDENTITY_DEFAULTS = {'backbone': DEFAULT_BACKBONE}


def identity_value(run: dict, field: str):
  """A run's value of an identity field, its default where the run leaves the field out."""
  v = run.get(field)
  return IDENTITY_DEFAULTS.get(field) if v is None else v


def identity_fields(runs: Sequence[dict]) -> list[str]:
  """The union of the runs' identity fields, in first-seen order."""
  out: list[str] = []
  for r in runs:
    for f in r.get('identity_fields', ()):
      if f not in out:
        out.append(f)
  return out


def describe(run: dict, fields: Optional[Sequence[str]] = None) -> str:
  """'task, field=value, ...' label of a run's identity (or of `fields` of it)."""
  fields = list(fields if fields is not None else run.get('identity_fields', ()))
  parts = []
  for f in fields:
    v = run.get(f)
    if v is None:
      continue
    parts.append(str(v) if f in ('task', 'method') else f'{f}={v}')
  return ', '.join(parts)


def _metric(run: dict, name: str, which: str = 'best') -> Optional[float]:
  v = run.get(which, {}).get(name)
  return None if v is None else float(v)


def aggregate(runs: Sequence[dict], which: str = 'best') -> list[dict]:
  """Groups runs that differ only in seed; mean and std (population, ddof=0) over seeds (std is
  None for a single seed: there is no spread to report)."""
  fields = identity_fields(runs)
  groups: 'OrderedDict[tuple, list]' = OrderedDict()
  for r in runs:
    ov = {k: v for k, v in r.get('overrides', {}).items() if k != 'seed'}
    key = tuple((f, identity_value(r, f)) for f in fields) + tuple(
        sorted((k, str(v)) for k, v in ov.items()))
    groups.setdefault(key, []).append(r)
  rows = []
  for members in groups.values():
    first = members[0]
    row = {f: identity_value(first, f) for f in fields}
    row['identity_fields'] = fields
    row['memory_floats'] = first.get('memory_floats')
    row['write_flops_per_sample'] = first.get('write_flops_per_sample')
    row['seeds'] = len(members)
    for m in METRICS:
      vals = [v for v in (_metric(x, m, which) for x in members) if v is not None]
      row[f'{m}_mean'] = float(np.mean(vals)) if vals else None
      row[f'{m}_std'] = float(np.std(vals)) if len(vals) > 1 else None
    row['steps_mean'] = float(np.mean([x.get('steps', 0) for x in members]))
    row['wall_time_min_mean'] = float(np.mean([x.get('wall_time_s', 0) for x in members])) / 60
    row['slugs'] = [x.get('slug') for x in members]
    rows.append(row)
  return rows


def columns_for(rows: Sequence[dict]) -> list[str]:
  """Identity columns that vary (or the method), then metrics."""
  fields = rows[0].get('identity_fields', []) if rows else []
  varying = [f for f in fields if len({str(r.get(f)) for r in rows}) > 1]
  cols = varying or ['method']
  return cols + ['seeds', 'em_mean', 'em_std', 'token_acc_mean', 'token_acc_std',
                 'steps_mean', 'wall_time_min_mean']


def _fmt(col: str, v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return '-'
  base = col.rsplit('_', 1)[0] if col.endswith(('_mean', '_std')) else col
  if base in PERCENT:
    return f'{100 * v:.2f}'
  if col.endswith('flops_per_sample') and isinstance(v, (int, float)):
    return f'{v / 1e6:.1f}M'
  if isinstance(v, float):
    return f'{v:.4g}' if abs(v) >= 1e4 else f'{v:.4f}'
  return str(v)


def _header(col: str) -> str:
  base = col[:-5] if col.endswith('_mean') else col
  base = base.replace('em', 'EM') if base in ('em', 'em_std', 'gen_em') else base
  pct = (col.rsplit('_', 1)[0] if col.endswith(('_mean', '_std')) else col) in PERCENT
  return base + (' (%)' if pct else '')


def markdown_table(rows: Sequence[dict], cols: Sequence[str]) -> str:
  head = '| ' + ' | '.join(_header(c) for c in cols) + ' |'
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


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_em_vs(rows: Sequence[dict], x: str, path: str, *, title: str) -> bool:
  """EM (mean, std error bars) against identity field `x`, one line per combination of the other
  varying identity fields."""
  pts = [r for r in rows if r.get(x) is not None and r.get('em_mean') is not None]
  if len({r.get(x) for r in pts}) < 2:
    return False  # nothing varies along this axis
  fields = [f for f in pts[0].get('identity_fields', []) if f != x
            and len({str(r.get(f)) for r in pts}) > 1]
  lines: 'OrderedDict[str, list]' = OrderedDict()
  for r in pts:
    lines.setdefault(describe(r, fields) or 'runs', []).append(r)
  numeric = all(isinstance(r[x], (int, float)) for r in pts)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for label, rs in lines.items():
    rs = sorted(rs, key=lambda r: float(r[x]) if numeric else str(r[x]))
    xs = [float(r[x]) if numeric else str(r[x]) for r in rs]
    ax.errorbar(xs, [100 * r['em_mean'] for r in rs],
                yerr=[100 * (r['em_std'] or 0) for r in rs], marker='o', capsize=3, label=label)
  if numeric and min(float(r[x]) for r in pts) > 0 and (
      max(float(r[x]) for r in pts) / min(float(r[x]) for r in pts) > 50):
    ax.set_xscale('log')
  ax.set(xlabel=x, ylabel='exact match (%)', ylim=(-2, 102), title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_k_extrapolation(series: Sequence[tuple[str, Sequence[dict]]], path: str, *,
                         title: str = 'Test-time K extrapolation',
                         k_train: Optional[int] = None) -> bool:
  """EM and WRITE loss at M_K against K_eval, one line per (label, rows) series (paper Fig. 4)."""
  series = [(label, rows) for label, rows in series if rows]
  if not series:
    return False
  plt = _pyplot()
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
  for label, rows in series:
    ks = [p['K_eval'] for p in rows]
    a1.plot(ks, [100 * (p.get('em') or 0) for p in rows], 'o-', label=label)
    a2.plot(ks, [p['write_loss'] if p.get('write_loss') is not None else float('nan')
                 for p in rows], 'o-', label=label)
  a1.set(xlabel='K_eval (WRITE steps at test time)', ylabel='exact match (%)', ylim=(-2, 102))
  a2.set(xlabel='K_eval', ylabel='WRITE loss at M_K')
  for a in (a1, a2):
    if k_train is not None:
      a.axvline(k_train, color='gray', ls='--', lw=1, label=f'K_train={k_train}')
    a.grid(alpha=0.3)
  a1.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_method_bars(rows: Sequence[dict], path: str, *, title: str) -> bool:
  """One bar per configuration: EM (mean, std), labelled with the memory floats it keeps."""
  pts = [r for r in rows if r.get('em_mean') is not None]
  if not pts:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(pts), 3.8))
  labels = [describe(r).replace(', ', '\n') for r in pts]
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
  ax.set_xticks(range(len(pts)), labels, fontsize=7)
  ax.set_ylabel('exact match (%)')
  ax.set_ylim(0, 110)
  ax.grid(alpha=0.3, axis='y')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def make_report(runs: Sequence[dict], out_dir: str, figures: Iterable[str] = (),
                title: str = '') -> dict:
  """Writes report.md, report.csv and the figures; returns {'table', 'rows', 'files'}."""
  os.makedirs(out_dir, exist_ok=True)
  rows = aggregate(runs)
  cols = columns_for(rows)
  table = markdown_table(rows, cols)
  md = os.path.join(out_dir, 'report.md')
  csv_path = os.path.join(out_dir, 'report.csv')
  write_csv(rows, cols + ['memory_floats', 'write_flops_per_sample', 'slugs'], csv_path)
  figs = list(figures) or [f'em_vs:{f}' for f in identity_fields(runs)]
  files = []
  for kind in figs:
    if kind == 'k_extrapolation':
      path = os.path.join(out_dir, 'k_extrapolation.png')
      ok = plot_k_extrapolation([(describe(r), r['k_extrapolation']) for r in runs
                                 if r.get('k_extrapolation')], path)
    elif kind == 'em_by_method':
      path = os.path.join(out_dir, 'em_by_method.png')
      ok = plot_method_bars(rows, path, title=title or kind)
    elif kind.startswith('em_vs:'):
      field = kind.partition(':')[2]
      path = os.path.join(out_dir, f'em_vs_{field}.png')
      ok = plot_em_vs(rows, field, path, title=title or kind)
    else:
      raise ValueError(f'unknown figure kind {kind!r}; allowed: em_vs:FIELD, em_by_method, '
                       'k_extrapolation')
    if ok:
      files.append(path)
  with open(md, 'w') as f:
    f.write((f'# {title}\n\n' if title else '') + table + '\n')
    for p in files:
      f.write(f'\n![{os.path.basename(p)}]({os.path.basename(p)})\n')
  return {'table': table, 'rows': rows, 'files': [md, csv_path] + files}
