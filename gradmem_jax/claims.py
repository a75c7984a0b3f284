"""The paper's three key-value claims (SPEC §6) as one report from a claims sweep
(`configs/sweeps/claims.py`, `python -m experiments.claims --sweep_dir=...`):

  1. GradMem beats a forward-only writer (RMT) with the same memory size;
  2. more gradient steps scale capacity better than repeated forward writes (GradMem K=1/2/5 vs RMT
     x1/x2/x5 as the number of pairs N grows);
  3. the second-order meta-gradient is essential (first order collapses).

Every cell is the mean and spread (population std) of the best validation EM over seeds, with the
number of seeds, steps and minutes it took, and how many of its runs were still rising when they
stopped (`convergence`: the issue asks for runs that converged or plateaued, and a run cut short
understates its method). A claim is called supported at an N when the two means
differ by more than the sum of the two spreads (and by at least one point of EM); with one seed it
is only "ahead" / "behind": no spread, no verdict. The paper's numbers stand beside ours.

The paper's full-context baselines, the transformer reading the whole context and Mamba reading it
through its recurrent state (`claims.py:baselines`), are rows of the table and lines of the
figure when their runs are given (e.g. `--sweep_dir=runs/claims_cpu,runs/claims_baselines`): the
paper's upper bounds (on the small CPU model and budget they need not be one). They enter no
claim.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from gradmem_jax import sweeps
from gradmem_jax.metrics_rows import parse_row
from gradmem_jax.report import DEFAULT_BACKBONE, _pyplot, identity_value

# SPEC §6: EM (%) of the 4-layer 128-d models, 3 seeds; (label, N) -> EM.
PAPER = {
    'GradMem K=1': {4: 100, 8: 99.7, 16: 96.3, 32: 86.9, 64: 58.6, 96: 32.6},
    'GradMem K=2': {4: 100, 8: 100, 16: 99.6, 32: 98.3, 64: 72.8, 96: 34.2},
    'GradMem K=5': {4: 100, 8: 100, 16: 100, 32: 99.9, 64: 99.1, 96: 88.4},
    'RMT x1': {4: 100, 8: 100, 16: 45.5, 32: 44.3, 64: 19.3, 96: 12.9},
    'GradMem K=1 first-order': {8: 12.9, 16: 3.0},
    'GradMem K=2 first-order': {8: 46.7, 16: 4.2},
    'Full context': {4: 100, 8: 100, 16: 99.8, 32: 99.8, 64: 96.5, 96: 98.8},
    'Mamba (full context)': {4: 99.9, 8: 98.9, 16: 98.7, 32: 90.2, 64: 95.2, 96: 92.2},
}
# How a backbone family other than the default Llama-style decoder shows in a label.
BACKBONE_NAMES = {'mamba': 'Mamba', 'gpt2': 'GPT-2'}
FULL_CONTEXT = 'full context'
MIN_GAP = 0.01  # a difference below one point of EM is no difference
# A run is still rising when the best validation EM of its last quarter of steps beats the best
# before it by more than this: two points of EM, more than a plateaued run's evaluations wobble
# (GradMem K=2 at N=4, seed 1: 94.6-95.6% over its last 2,500 steps).
RISE = 0.02
# A run fell back when its last evaluation is more than this below its best: it diverged or
# collapsed after its best (GradMem K=5 at N=2, seed 2: 85.5% at step 3,000, 3.4% at 4,000). Its
# cell is not affected (a run keeps, and the report takes, its best evaluation), but the run did
# not converge, which the report says.
FALL = 0.2
# memory/config.py's, restated so that the report tools import no JAX (a test checks they match).
GRAD_MODES = ('second', 'first', 'none')
RMT_UPDATES = ('replace', 'residual')


def label(run: dict) -> Optional[str]:
  """'GradMem K=2', 'GradMem K=1 first-order', 'RMT x5' (+ ' residual'), the full-context
  baselines 'Full context' (the transformer) and 'Mamba (full context)', or None (another
  method: not part of the claims). On a backbone other than the default Llama-style decoder a
  memory method's label says so, after its K: 'GradMem K=1 (Mamba) first-order'."""
  method, k = run.get('method'), run.get('K')
  backbone = identity_value(run, 'backbone')
  default = backbone == DEFAULT_BACKBONE
  name = BACKBONE_NAMES.get(backbone, backbone)
  on = '' if default else f' ({name})'
  if method == 'gradmem':
    mode = run.get('grad_mode', 'second')
    return f'GradMem K={k}{on}' + ('' if mode == 'second' else f' {mode}-order')
  if method == 'rmt':
    return f'RMT x{k}{on}' + (' residual' if run.get('rmt_update') == 'residual' else '')
  if method == 'full_context':
    return 'Full context' if default else f'{name} ({FULL_CONTEXT})'
  return None


def is_baseline(lab: str) -> bool:
  """A full-context label: no memory, no K."""
  return lab.lower().startswith(FULL_CONTEXT) or lab.endswith(f'({FULL_CONTEXT})')


def trained_k(lab: str) -> int:
  """The K (steps) or x (writes) a label was trained with: 'RMT x2 residual' -> 2."""
  return int(lab.split('=' if 'K=' in lab else 'x')[1].split()[0])


def label_order(lab: str) -> tuple:
  """Report order: GradMem (second order), RMT, first order, then the full-context baselines; by
  K within each."""
  if is_baseline(lab):
    return (3, 0, lab)
  kind = 0 if lab.startswith('GradMem') and 'order' not in lab else (
      1 if lab.startswith('RMT') else 2)
  return (kind, trained_k(lab), lab)


def _line_style(lab: str) -> str:
  if is_baseline(lab):
    return '-.'
  return '--' if 'order' in lab else (':' if lab.startswith('RMT') else '-')


def em_curve(metrics_path: str) -> list:
  """[(step, validation EM)] from a run's metrics.jsonl, by step. A resumed run logs again the
  steps after its last checkpoint (unless the trainer could cut them on resume): the later record
  of a step wins, the one the run went on from. A torn last line (a machine gone mid-write) is
  left out with a warning; any other unreadable line is an error naming the file and line.
  [] when the file is absent."""
  if not os.path.exists(metrics_path):
    return []
  with open(metrics_path, 'rb') as f:
    raw_lines = f.read().split(b'\n')
  torn = raw_lines.pop()  # after the last newline: b'' for a complete file
  by_step: dict = {}
  for n, raw in enumerate(raw_lines + ([torn] if torn.strip() else []), start=1):
    if not raw.strip():
      continue
    rec, why = parse_row(raw)
    if why is None and 'val/em' in rec:
      try:
        by_step[int(rec['step'])] = float(rec['val/em'])
      except (TypeError, ValueError) as e:
        why = f'val/em {rec["val/em"]!r} is not a number ({e})'
    if why is not None:
      if n == len(raw_lines) + 1:
        warnings.warn(f'{metrics_path}: a torn last line left out ({raw[:60]!r})')
        continue
      raise ValueError(f'{metrics_path}, line {n}: not a metrics record with a step and a '
                       f'numeric val/em ({why}): {raw[:80]!r}')
  return sorted(by_step.items())


def convergence(run: dict) -> Optional[str]:
  """'target' (stopped at its target EM), 'rising' (the best EM of the last quarter of its steps
  beats the best before it by more than RISE: cut short), 'plateau' (neither), or None (no
  learning curve kept, or too short to judge: no evaluation in the last quarter of its steps, or
  fewer than two before it)."""
  if str(run.get('stop_reason') or '').startswith('target EM'):
    return 'target'
  curve = run.get('em_curve') or []
  if not curve:
    return None
  last = curve[-1][0]
  late = [em for step, em in curve if step > 0.75 * last]
  early = [em for step, em in curve if step <= 0.75 * last]
  if not late or len(early) < 2:
    return None
  return 'rising' if max(late) - max(early) > RISE else 'plateau'


class DuplicateRunError(ValueError):
  """Two runs of one method, N and seed in a report's input."""


def _run_name(run: dict) -> str:
  return run.get('slug') or run.get('source') or 'a run without a name'


def claim_runs(runs: Sequence[dict]):
  """(label, run) of the runs a claims report uses: a claims method, an N and a best EM."""
  for r in runs:
    lab = label(r)
    if lab is not None and r.get('best', {}).get('em') is not None and \
        r.get('n_pairs') is not None:
      yield lab, r


def cells(runs: Sequence[dict]) -> 'OrderedDict[tuple, dict]':
  """(label, N) -> {'em_mean', 'em_std' (None for one seed), 'seeds', 'steps', 'minutes' (mean
  over the 'timed' runs that kept their wall time; None if none did), 'timed',
  'k_extrapolation' (K_eval -> mean EM over the seeds that have it), 'kx_seeds' (how many
  have it)}."""
  groups: dict = {}
  for lab, r in claim_runs(runs):
    groups.setdefault((lab, int(r['n_pairs'])), []).append(r)
  out: 'OrderedDict[tuple, dict]' = OrderedDict()
  for key in sorted(groups, key=lambda k: (label_order(k[0]), k[1])):
    members = groups[key]
    seen: dict = {}
    for m in members:
      seed = int(m.get('seed', 0))
      if seed in seen:
        raise DuplicateRunError(
            f'two runs of {key[0]} at N={key[1]}, seed {seed} ({_run_name(seen[seed])} and '
            f'{_run_name(m)}): a claims report takes one run per method, N and seed; give the '
            'longer run as a later --sweep_dir (it replaces the earlier) or leave one out')
      seen[seed] = m
    ems = [float(m['best']['em']) for m in members]
    walls = [float(m['wall_time_s']) for m in members if m.get('wall_time_s') is not None]
    steps = [float(m['steps']) for m in members if m.get('steps') is not None]
    verdicts = [convergence(m) for m in members]
    kx: dict = {}
    for m in members:  # a full-context baseline has no WRITE steps to extrapolate
      for row in (() if is_baseline(key[0]) else m.get('k_extrapolation') or ()):
        kx.setdefault(int(row['K_eval']), []).append(float(row['em']))
    out[key] = {'em_mean': float(np.mean(ems)),
                'em_std': float(np.std(ems)) if len(ems) > 1 else None,
                'seeds': len(ems),
                'seed_ids': sorted(seen),
                'by_seed': {seed: float(m['best']['em']) for seed, m in seen.items()},
                'steps': float(np.mean(steps)) if steps else None,
                'minutes': (float(np.mean(walls)) / 60 if walls else None),
                'timed': len(walls),
                'k_extrapolation': {k: float(np.mean(v)) for k, v in sorted(kx.items())},
                'kx_seeds': sum(1 for m in members if m.get('k_extrapolation')) if kx else 0,
                'rising': sum(v == 'rising' for v in verdicts),
                'rising_seeds': sorted(int(m.get('seed', 0)) for m, v in zip(members, verdicts)
                                       if v == 'rising'),
                'judged': sum(v is not None for v in verdicts),
                'with_curve': sum(bool(m.get('em_curve')) for m in members)}
  return out


def _cell_text(c: Optional[dict]) -> str:
  if c is None:
    return '-'
  spread = '' if c['em_std'] is None else f' ± {100 * c["em_std"]:.1f}'
  if c['minutes'] is None:
    minutes = 'minutes not kept'
  else:
    minutes = f'{c["minutes"]:.1f} min' + (
        '' if c['timed'] == c['seeds'] else f' over {c["timed"]} timed')
  steps = 'steps not kept' if c['steps'] is None else f'{c["steps"]:.0f} steps'
  rising = '' if not c['judged'] else f'; rising {c["rising"]}/{c["judged"]}'
  return (f'{100 * c["em_mean"]:.1f}{spread} ({c["seeds"]} seed{"s" * (c["seeds"] > 1)}, '
          f'{steps}, {minutes}{rising})')


def em_vs_n_table(cs: 'OrderedDict[tuple, dict]') -> str:
  ns = sorted({n for _, n in cs})
  labels = list(OrderedDict.fromkeys(lab for lab, _ in cs))
  head = '| method | ' + ' | '.join(f'N={n}' for n in ns) + ' | paper (same N) |'
  lines = [head, '|' + '---|' * (len(ns) + 2)]
  for lab in labels:
    paper = PAPER.get(lab, {})
    ref = ', '.join(f'{n}: {paper[n]}' for n in ns if n in paper) or '-'
    lines.append(f'| {lab} | ' + ' | '.join(_cell_text(cs.get((lab, n))) for n in ns)
                 + f' | {ref} |')
  return '\n'.join(lines)


def compare(a: Optional[dict], b: Optional[dict]) -> Optional[str]:
  """'supported' / 'not supported' (a ahead of b, or not, beyond both spreads), 'ahead' / 'behind'
  (one seed on a side: no spread), or None when a cell is missing."""
  if a is None or b is None:
    return None
  gap = a['em_mean'] - b['em_mean']
  if a['em_std'] is None or b['em_std'] is None:
    return 'ahead' if gap >= MIN_GAP else 'behind or equal'
  if gap > max(a['em_std'] + b['em_std'], MIN_GAP):
    return 'supported'
  return 'not supported'


def _pair_line(cs, a_lab: str, b_lab: str, n: int) -> Optional[str]:
  a, b = cs.get((a_lab, n)), cs.get((b_lab, n))
  verdict = compare(a, b)
  if verdict is None:
    return None
  seeds = '' if a['seed_ids'] == b['seed_ids'] else (
      f' [{_seed_text(a["seed_ids"])} vs {_seed_text(b["seed_ids"])}]')
  return (f'N={n}: {a_lab} {100 * a["em_mean"]:.1f} vs {b_lab} {100 * b["em_mean"]:.1f} '
          f'({100 * (a["em_mean"] - b["em_mean"]):+.1f}): {verdict}{seeds}')


def _seed_text(seeds: Sequence[int]) -> str:
  return f'seed {seeds[0]}' if len(seeds) == 1 else 'seeds ' + ', '.join(map(str, seeds))


def _paired_gain(lo: Optional[dict], hi: Optional[dict]) -> Optional[str]:
  """What more steps (or writes) bought, over the seeds both cells have: seeds differ a lot here,
  so a mean over one seed against a mean over three would measure the seeds, not K."""
  if not lo or not hi:
    return None
  common = sorted(set(lo['by_seed']) & set(hi['by_seed']))
  if not common:
    return None
  gains = [hi['by_seed'][s] - lo['by_seed'][s] for s in common]
  spread = f' ± {100 * np.std(gains):.1f}' if len(gains) > 1 else ''
  return f'{100 * np.mean(gains):+.1f}{spread} EM ({_seed_text(common)}, paired)'


def claim_lines(cs: 'OrderedDict[tuple, dict]') -> list[str]:
  """One Markdown section per claim, with the numbers behind each verdict."""
  ns = sorted({n for _, n in cs})
  out = ['### Claim 1: GradMem beats RMT with the same memory (GradMem K=1 vs RMT x1)']
  lines = [_pair_line(cs, 'GradMem K=1', 'RMT x1', n) for n in ns]
  out += [f'- {l}' for l in lines if l] or ['- no cells for both methods yet']
  out.append('')
  out.append('### Claim 2: gradient steps scale capacity better than forward re-writes '
             '(GradMem K=k vs RMT xk)')
  any2 = False
  for k in (2, 5):  # K=1 vs x1 is claim 1; claim 2 is about more steps / more re-writes
    for n in ns:
      line = _pair_line(cs, f'GradMem K={k}', f'RMT x{k}', n)
      if line:
        out.append(f'- {line}')
        any2 = True
  for name in ('GradMem', 'RMT'):
    lab = (lambda k: f'GradMem K={k}') if name == 'GradMem' else (lambda k: f'RMT x{k}')
    for k in (2, 5):
      for n in ns:
        line = _paired_gain(cs.get((lab(1), n)), cs.get((lab(k), n)))
        if line:
          out.append(f'- N={n}: {name} {k} vs 1 {"steps" if name == "GradMem" else "writes"}: '
                     + line)
          any2 = True
  if not any2:
    out.append('- no cells for both methods yet')
  out.append('')
  out.append('### Claim 3: the second-order meta-gradient is essential (second vs first order)')
  lines = [_pair_line(cs, f'GradMem K={k}', f'GradMem K={k} first-order', n)
           for k in (1, 2) for n in ns]
  out += [f'- {l}' for l in lines if l] or ['- no cells for both modes yet']
  return out


def k_extrapolation_table(cs: 'OrderedDict[tuple, dict]') -> Optional[str]:
  rows = [(lab, n, c) for (lab, n), c in cs.items() if c['k_extrapolation']]
  if not rows:
    return None
  ks = sorted({k for *_, c in rows for k in c['k_extrapolation']})
  lines = ['| trained as | N | seeds evaluated | ' + ' | '.join(f'K_eval={k}' for k in ks) + ' |',
           '|' + '---|' * (len(ks) + 3)]
  for lab, n, c in rows:
    kx = c['k_extrapolation']
    lines.append(f'| {lab} | {n} | {c["kx_seeds"]} of {c["seeds"]} | ' + ' | '.join(
        f'{100 * kx[k]:.1f}' if k in kx else '-' for k in ks) + ' |')
  return '\n'.join(lines)


def _save(plt, fig, axes, path: str, grid_axis: str = 'both', legend_size: int = 7,
          legend_outside: bool = False) -> bool:
  """Grid and legend on each of `axes` (one Axes or several; the legend to the right of the plot
  with `legend_outside`, where it would hide points), then the file."""
  for ax in np.atleast_1d(axes):
    ax.grid(alpha=0.3, axis=grid_axis)
    if legend_outside:
      ax.legend(fontsize=legend_size, loc='center left', bbox_to_anchor=(1.02, 0.5))
    else:
      ax.legend(fontsize=legend_size)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_em_vs_n(cs, path: str) -> bool:
  if not cs:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8.2, 4.2))
  for lab in OrderedDict.fromkeys(l for l, _ in cs):
    pts = sorted((n, c) for (l, n), c in cs.items() if l == lab)
    ns = [n for n, _ in pts]
    ys = [100 * c['em_mean'] for _, c in pts]
    err = [100 * (c['em_std'] or 0.0) for _, c in pts]
    style = _line_style(lab)
    line = ax.errorbar(ns, ys, yerr=err, fmt='o' + style, capsize=3, label=lab)
    one = [(n, y) for (n, c), y in zip(pts, ys) if c['seeds'] == 1]
    if one:  # a point of one seed is hollow: no spread to show
      ax.plot(*zip(*one), 'o', color=line.lines[0].get_color(), markerfacecolor='white',
              zorder=3)
  ax.set(xscale='log', xlabel='pairs N', ylabel='best validation EM (%)', ylim=(-2, 102),
         title='KV retrieval: EM vs N (mean ± std over seeds; hollow: one seed)')
  ax.set_xticks(sorted({n for _, n in cs}), [str(n) for n in sorted({n for _, n in cs})])
  ax.set_xticks([], minor=True)  # only the N that ran are labelled (no '3x10^0' minor labels)
  return _save(plt, fig, ax, path, legend_outside=True)


def plot_em_vs_k_eval(cs, path: str) -> bool:
  """Test-time extrapolation: EM against the number of WRITE steps at evaluation, one line per
  trained method and N (mean over the seeds evaluated), a ring where K_eval is the training K."""
  rows = [(lab, n, c) for (lab, n), c in cs.items() if c['k_extrapolation']]
  if not rows:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for lab, n, c in rows:
    ks = sorted(c['k_extrapolation'])
    style = _line_style(lab)
    line, = ax.plot(ks, [100 * c['k_extrapolation'][k] for k in ks], 'o' + style,
                    label=f'{lab}, N={n} ({c["kx_seeds"]} seed{"s" * (c["kx_seeds"] > 1)})')
    k_train = trained_k(lab)
    if k_train in c['k_extrapolation']:
      ax.plot([k_train], [100 * c['k_extrapolation'][k_train]], 'o', markersize=12,
              markerfacecolor='none', color=line.get_color())
  ks = sorted({k for *_, c in rows for k in c['k_extrapolation']})
  ax.set(xscale='log', xlabel='WRITE steps at evaluation (K_eval)', ylim=(-2, 102),
         ylabel='validation EM (%)',
         title='Test-time K (ring: the K it was trained with)')
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.set_xticks([], minor=True)
  return _save(plt, fig, ax, path)


def plot_orders(cs, path: str) -> bool:
  """Claim 3: second- against first-order meta-gradients, bars per K and N with the seeds'
  spread."""
  pairs = [(lab, n) for (lab, n) in cs if lab.startswith('GradMem') and 'order' not in lab
           and (f'{lab} first-order', n) in cs]
  if not pairs:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  xs = np.arange(len(pairs))
  for off, suffix, name in ((-0.2, '', 'second order'), (0.2, ' first-order', 'first order')):
    cells_ = [cs[(lab + suffix, n)] for lab, n in pairs]
    bars = ax.bar(xs + off, [100 * c['em_mean'] for c in cells_], width=0.4, label=name,
                  yerr=[100 * (c['em_std'] or 0.0) for c in cells_], capsize=3)
    ax.bar_label(bars, fmt='%.1f', fontsize=7, padding=2)
  ax.set_xticks(xs, [f'{lab.split()[1]}, N={n}\n{_seeds_word(cs[(lab, n)], cs[(lab + " first-order", n)])}'
                     for lab, n in pairs])
  ax.set(ylabel='best validation EM (%)', ylim=(0, 102),
         title='GradMem: second- vs first-order meta-gradient (mean ± std over seeds)')
  return _save(plt, fig, ax, path, grid_axis='y')


def plot_curves(runs: Sequence[dict], path: str) -> bool:
  """Validation EM against training step, a panel per N, a line per run (a colour per method, the
  report's line styles), for the runs whose learning curves were kept: where the step budget
  left each seed (climbing, or flat)."""
  kept = [(lab, r) for lab, r in claim_runs(runs) if r.get('em_curve')]
  if not kept:
    return False
  plt = _pyplot()
  ns = sorted({int(r['n_pairs']) for _, r in kept})
  labels = sorted({lab for lab, _ in kept}, key=label_order)
  colours = {lab: f'C{i % 10}' for i, lab in enumerate(labels)}
  fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.8), squeeze=False, sharey=True)
  for ax, n in zip(axes[0], ns):
    shown = set()
    for lab, r in sorted(kept, key=lambda x: (label_order(x[0]), x[1].get('seed', 0))):
      if int(r['n_pairs']) != n:
        continue
      steps, ems = zip(*r['em_curve'])
      ax.plot(steps, [100 * e for e in ems], _line_style(lab), color=colours[lab], lw=1.2,
              alpha=0.85, label=None if lab in shown else lab)
      shown.add(lab)
    ax.set(title=f'N={n}', xlabel='training step', ylim=(-2, 102))
  axes[0][0].set_ylabel('validation EM (%)')
  fig.suptitle(f'Learning curves, a line per seed ({len(kept)} runs with curves kept)',
               fontsize=10)
  return _save(plt, fig, axes[0], path, legend_size=6)


def fell_back(run: dict) -> Optional[tuple]:
  """(best step, best EM, last step, last EM) of a run whose last evaluation is more than FALL
  below its best (its learning curve's first best), else None (no curve kept, or no fall)."""
  curve = run.get('em_curve') or []
  if len(curve) < 2:
    return None
  best_step, best = max(curve, key=lambda point: point[1])
  last_step, last = curve[-1]
  return (best_step, best, last_step, last) if best - last > FALL else None


def fall_lines(runs: Sequence[dict]) -> list[str]:
  """The runs that fell back after their best, one line each, in the cells' order."""
  found = []
  for lab, r in claim_runs(runs):
    f = fell_back(r)
    if f:
      found.append(((label_order(lab), int(r['n_pairs']), int(r.get('seed', 0))), lab, r, f))
  out = [f'- {lab}, N={r["n_pairs"]}, seed {int(r.get("seed", 0))}: best {100 * f[1]:.1f}% at '
         f'step {f[0]}, {100 * f[3]:.1f}% at its last evaluation (step {f[2]})'
         for _, lab, r, f in sorted(found, key=lambda x: x[0])]
  return out or [f'- none: no run with a learning curve ended more than {100 * FALL:.0f} points '
                 'below its best']


def convergence_lines(cs: 'OrderedDict[tuple, dict]') -> list[str]:
  """The cells with runs cut short while still rising: their means understate the method."""
  out = []
  for (lab, n), c in cs.items():
    if c['rising']:
      out.append(f'- {lab}, N={n}: {_seed_text(c["rising_seeds"])} still rising '
                 f'({c["rising"]} of {c["judged"]} judged)')
  judged = sum(c['judged'] for c in cs.values())
  curves = sum(c['with_curve'] for c in cs.values())
  total = sum(c['seeds'] for c in cs.values())
  if not judged:
    return ['- no run could be judged: no learning curves kept, and none stopped at its target']
  return (out or ['- none: every run judged had reached its target or plateaued']) + [
      f'- {judged} of {total} runs judged; {curves} have a learning curve (the others were kept '
      'without one, e.g. rebuilt from a committed table; a run that stopped at its target EM is '
      'judged without one)']


def _seeds_word(a: dict, b: dict) -> str:
  return (f'{a["seeds"]} seed{"s" * (a["seeds"] > 1)}' if a['seeds'] == b['seeds']
          else f'{a["seeds"]} / {b["seeds"]} seeds')


def overlay(run_lists: Sequence[Sequence[dict]]) -> list[dict]:
  """The runs of several sweeps as one set: the runs of a later list replace the earlier lists'
  runs of the same method label, N and seed (e.g. a longer-budget rerun of some points); every
  other run is kept, and so is every run of one list (a list's own points are never merged:
  a grid has many runs per label, N and seed). A run without a seed counts as seed 0."""
  key = lambda r: (label(r), r.get('n_pairs'), r.get('seed', 0))
  out: list = []
  for runs in run_lists:
    later = {key(r) for r in runs}
    out = [r for r in out if key(r) not in later] + list(runs)
  return out


# ------------------------------------------------------------------------------------------------
# The runs ledger: every run behind a report, one CSV row each (runs.csv beside claims.md). Run
# directories do not always outlive a machine; a committed ledger is a report's input as good as a
# sweep directory, so a later report can add new runs to old ones without their directories.

LEDGER_FIELDS = ('label', 'method', 'K', 'grad_mode', 'rmt_update', 'n_pairs', 'seed', 'best_em',
                 'best_step', 'steps', 'wall_time_s', 'k_extrapolation', 'source', 'stop_reason',
                 'em_curve', 'backbone', 'machine', 'init_from', 'init_step', 'init_checksum',
                 'best_checksum')
# Columns added later: a ledger written before them still reads (as runs without a curve, on the
# default backbone, on a machine not recorded). 'machine': where the run's sessions ran
# (environment.session_machines, joined by ' -> '), blank for runs from before environment.jsonl.
# 'init_from' / 'init_step' / 'init_checksum': the point a curriculum run grew from, the step
# and the checksum of the parameters it loaded; 'best_checksum': the checksum of a run's best
# parameters (blank for runs from before they were recorded): lineage_lines checks the chains.
OPTIONAL_LEDGER_FIELDS = ('stop_reason', 'em_curve', 'backbone', 'machine', 'init_from',
                          'init_step', 'init_checksum', 'best_checksum')
LEDGER_METHODS = ('gradmem', 'rmt', 'full_context')


def ledger_rows(runs: Sequence[dict]) -> list[dict]:
  """The claims runs (label() not None, with a best EM) as ledger rows, in report order."""
  rows = []
  for lab, r in claim_runs(runs):
    em = r['best']['em']
    kx = {int(row['K_eval']): float(row['em']) for row in r.get('k_extrapolation') or ()}
    rows.append({
        'label': lab, 'method': r['method'], 'K': '' if r.get('K') is None else int(r['K']),
        'grad_mode': r.get('grad_mode', 'second') if r['method'] == 'gradmem' else '',
        'rmt_update': r.get('rmt_update', 'replace') if r['method'] == 'rmt' else '',
        'n_pairs': int(r['n_pairs']), 'seed': int(r.get('seed', 0)), 'best_em': float(em),
        'best_step': '' if r.get('best_step') is None else int(r['best_step']),
        'steps': '' if r.get('steps') is None else int(r['steps']),
        'wall_time_s': '' if r.get('wall_time_s') is None else float(r['wall_time_s']),
        'k_extrapolation': json.dumps(kx, sort_keys=True) if kx else '',
        'source': r.get('source') or r.get('slug') or '',
        'stop_reason': r.get('stop_reason') or '',
        'em_curve': (json.dumps([[int(s), round(float(e), 6)] for s, e in r['em_curve']],
                                separators=(',', ':')) if r.get('em_curve') else ''),
        'backbone': '' if identity_value(r, 'backbone') == DEFAULT_BACKBONE else r['backbone'],
        'machine': ' -> '.join(r['machines']) if r.get('machines') else r.get('machine') or '',
        'init_from': _init_source(r) or '',
        'init_step': '' if (r.get('init_from') or {}).get('step') is None else
                     int(r['init_from']['step']),
        'init_checksum': _blank_or(_init_checksum(r)),
        'best_checksum': _blank_or(r.get('best_params_checksum'))})
  rows.sort(key=lambda w: (label_order(w['label']), w['n_pairs'], w['seed']))
  return rows


def _blank_or(x) -> str:
  return '' if x is None else repr(float(x))


def _init_source(r: dict) -> Optional[str]:
  """The point (slug) a curriculum run grew from: init_from's directory name."""
  path = (r.get('init_from') or {}).get('path')
  return os.path.basename(os.path.normpath(path)) if path else None


def _init_checksum(r: dict) -> Optional[float]:
  init = r.get('init_from') or {}
  return None if init.get('part') else init.get('params_checksum')


def lineage_lines(runs: Sequence[dict]) -> list[str]:
  """Each curriculum chain should be one lineage of runs: a run at N grew from the best
  parameters of the run shown at the previous N. A point rerun after its users ran (a lost run
  directory, a rerun on another machine) breaks that silently; the checksums say so. Runs
  from before the checksums were recorded are not checked (counted)."""
  named: dict = {}
  for _, r in claim_runs(runs):
    named.setdefault(r.get('slug') or r.get('source'), []).append(r)
  ok, unknown, broken = 0, 0, []
  for lab, r in claim_runs(runs):
    src_name = _init_source(r)
    if src_name is None:
      continue
    # Matched by the point's name: two runs of that name (sweeps merged) leave it unchecked.
    src = named[src_name][0] if len(named.get(src_name, ())) == 1 else None
    want = _init_checksum(r)
    have = None if src is None else src.get('best_params_checksum')
    if src is None or want is None or have is None:
      unknown += 1
    elif math.isclose(float(want), float(have), rel_tol=1e-12, abs_tol=0.0):
      ok += 1
    else:
      step, best = (r.get('init_from') or {}).get('step'), src.get('best_step')
      steps = (f'; it loaded step {step}, the run shown keeps step {best}'
               if step is not None and best is not None else '')
      broken.append(f'- **{lab}, N={r["n_pairs"]}, seed {r.get("seed", 0)}** grew from other '
                    f'parameters than the best of the run shown for {src_name} (checksum '
                    f'{float(want)!r}, the run shown: {float(have)!r}{steps}): that point ran '
                    'again after this one started, or this one loaded its latest checkpoint. The '
                    'chain mixes runs; run this point again, or show the run it grew from.')
  line = (f'Curriculum chains: {ok} run{"s" * (ok != 1)} grew from the best parameters of the run '
          f'shown for their source; {len(broken)} from other parameters; {unknown} not checked '
          '(a source not in this report or named twice, or runs from before the checksums were '
          'recorded).')
  return [line] + ([''] + broken if broken else [])


def machines_line(rows: Sequence[dict]) -> str:
  """Where the ledger's runs ran, with counts: the CPUs and instruction set change a run's
  numbers, so a rerun on another machine parts from it."""
  counts = OrderedDict()
  for r in sorted(rows, key=lambda r: (not r['machine'], r['machine'])):
    name = r['machine'] or 'not recorded (runs from before environment.jsonl)'
    counts[name] = counts.get(name, 0) + 1
  where = '; '.join(f'{name}: {n} run{"s" if n != 1 else ""}' for name, n in counts.items())
  return ('Where they ran (the `machine` column; a run repeats bit for bit only on the same kind '
          'of machine with the same number of CPUs and the same software, jaxlib and XLA_FLAGS '
          f'included): {where}.')


def write_ledger(runs: Sequence[dict], path: str) -> int:
  """runs.csv: one row per claims run (written whole, then renamed). Returns the row count."""
  return write_ledger_rows(ledger_rows(runs), path)


def write_ledger_rows(rows: Sequence[dict], path: str) -> int:
  """Ledger rows (LEDGER_FIELDS, e.g. ledger_rows' or made by hand) to a runs.csv."""
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=LEDGER_FIELDS)
    w.writeheader()
    w.writerows(rows)
  os.replace(tmp, path)
  return len(rows)


def _ledger_value(path: str, line: int, row: dict, field: str, kind, allow_blank=False):
  text = (row.get(field) or '').strip()
  where = f'{path}, line {line}, field {field!r}'
  if not text:
    if allow_blank:
      return None
    raise ValueError(f'{where}: empty; it is required')
  try:
    return kind(text)
  except ValueError:
    raise ValueError(f'{where}: {text!r} is not {"an integer" if kind is int else "a number"}')


def read_ledger(path: str) -> list[dict]:
  """A runs.csv (write_ledger's, or one written by hand for runs whose directories are gone) as
  run records that cells() and overlay() take like a sweep directory's. Every row is checked:
  a bad one is an error naming its line and field, never skipped."""
  try:
    return _read_ledger(path)
  except csv.Error as e:  # e.g. a field over csv's size limit, a NUL byte
    raise ValueError(f'{path}: not a readable CSV file: {e}')


def _read_ledger(path: str) -> list[dict]:
  with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: a BOM from a spreadsheet
    reader = csv.DictReader(f)
    missing = [k for k in LEDGER_FIELDS if k not in (reader.fieldnames or ())
               and k not in OPTIONAL_LEDGER_FIELDS]
    if missing:
      raise ValueError(f'{path}: not a claims runs ledger: missing columns {missing}; '
                       f'the columns are {list(LEDGER_FIELDS)}')
    runs, lines = [], {}
    for line, row in enumerate(reader, start=2):
      where = f'{path}, line {line}'
      method = (row['method'] or '').strip()
      if method not in LEDGER_METHODS:
        raise ValueError(f"{where}, field 'method': {method!r}; allowed: {LEDGER_METHODS}")
      r = {'method': method,
           'K': _ledger_value(path, line, row, 'K', int, allow_blank=method == 'full_context'),
           'n_pairs': _ledger_value(path, line, row, 'n_pairs', int),
           'seed': _ledger_value(path, line, row, 'seed', int),
           'best_step': _ledger_value(path, line, row, 'best_step', int, allow_blank=True),
           'steps': _ledger_value(path, line, row, 'steps', int, allow_blank=True),
           'wall_time_s': _ledger_value(path, line, row, 'wall_time_s', float, allow_blank=True),
           'source': (row['source'] or '').strip(),
           'stop_reason': (row.get('stop_reason') or '').strip() or None,
           'machine': (row.get('machine') or '').strip()}
      source = (row.get('init_from') or '').strip()
      if source:
        r['init_from'] = {'path': source, 'params_checksum': _ledger_value(
            path, line, row, 'init_checksum', float, allow_blank=True),
            'step': _ledger_value(path, line, row, 'init_step', int, allow_blank=True)}
      r['best_params_checksum'] = _ledger_value(path, line, row, 'best_checksum', float,
                                                allow_blank=True)
      em = _ledger_value(path, line, row, 'best_em', float)
      if not 0.0 <= em <= 1.0:
        raise ValueError(f"{where}, field 'best_em': {em} is outside [0, 1] (a fraction, not %)")
      r['best'] = {'em': em}
      backbone = (row.get('backbone') or '').strip()
      if backbone:
        if not re.fullmatch(r'[a-z][a-z0-9_]*', backbone):
          raise ValueError(f"{where}, field 'backbone': {backbone!r} is not a backbone family "
                           "name (e.g. 'mamba'; blank: the default Llama-style decoder)")
        r['backbone'] = backbone
      if method == 'gradmem':
        mode = (row['grad_mode'] or 'second').strip()
        if mode not in GRAD_MODES:
          raise ValueError(f"{where}, field 'grad_mode': {mode!r}; allowed: {GRAD_MODES}")
        r['grad_mode'] = mode
      elif method == 'rmt':
        upd = (row['rmt_update'] or 'replace').strip()
        if upd not in RMT_UPDATES:
          raise ValueError(f"{where}, field 'rmt_update': {upd!r}; allowed: {RMT_UPDATES}")
        r['rmt_update'] = upd
      else:  # full context: no WRITE, so no gradient mode or RMT update
        for f in ('grad_mode', 'rmt_update'):
          if (row.get(f) or '').strip():
            raise ValueError(f"{where}, field {f!r}: {row[f].strip()!r} given for a "
                             "full-context run, which has none; leave it blank")
      kx_text = (row['k_extrapolation'] or '').strip()
      if kx_text:
        try:
          kx = json.loads(kx_text)
          r['k_extrapolation'] = [{'K_eval': int(k), 'em': float(v)} for k, v in kx.items()]
        except (ValueError, AttributeError, TypeError):
          raise ValueError(f"{where}, field 'k_extrapolation': {kx_text!r} is not a JSON object "
                           'of K_eval -> EM, e.g. {"1": 0.9, "2": 0.95}')
      curve_text = (row.get('em_curve') or '').strip()
      if curve_text:
        try:
          curve = [(int(step), float(em_)) for step, em_ in json.loads(curve_text)]
        except (ValueError, TypeError):
          raise ValueError(f"{where}, field 'em_curve': {curve_text[:60]!r} is not a JSON list "
                           'of [step, EM] pairs, e.g. [[500, 0.41], [1000, 0.83]]')
        for (step, em_), prev in zip(curve, [None] + curve[:-1]):
          if not 0.0 <= em_ <= 1.0:
            raise ValueError(f"{where}, field 'em_curve': EM {em_} at step {step} is outside "
                             '[0, 1] (fractions, not %)')
          if prev is not None and step <= prev[0]:
            raise ValueError(f"{where}, field 'em_curve': step {step} after step {prev[0]}; "
                             'the steps must increase')
        r['em_curve'] = curve
      lab = (row['label'] or '').strip()
      if lab and lab != label(r):
        raise ValueError(f"{where}, field 'label': {lab!r} does not match the row's method "
                         f'fields, which make {label(r)!r}')
      key = (label(r), r['n_pairs'], r['seed'])
      if key in lines:
        raise ValueError(f'{where}: the same run as line {lines[key]} ({key[0]}, N={key[1]}, '
                         f'seed {key[2]}); a ledger holds one row per method, N and seed')
      lines[key] = line
      runs.append(r)
  return runs


def load_runs(source: str) -> list[dict]:
  """A report's input: a sweep directory (or an archive of one), or a runs.csv ledger."""
  if os.path.isfile(source):
    return read_ledger(source)
  if os.path.isdir(source):
    runs = sweeps.collect(source)
    for r in runs:
      r['em_curve'] = em_curve(os.path.join(source, r['slug'], 'metrics.jsonl'))
    return runs
  raise ValueError(f'{source!r} is neither a sweep directory nor a runs ledger (.csv file)')


def point_label(point: dict) -> Optional[str]:
  """label() of a claims sweep point (its overrides): the label its run will carry. The backbone
  comes from `model.kind` or the preset that swaps it (`preset=mamba`)."""
  backbone = point.get('model.kind') or ('mamba' if point.get('preset') == 'mamba' else None)
  return label({'method': point.get('method'), 'K': point.get('K'),
                'grad_mode': point.get('grad_mode', 'second'),
                'rmt_update': point.get('memory.rmt_update'), 'backbone': backbone})


def still_to_run(runs: Sequence[dict], points: Sequence[dict]) -> 'OrderedDict[tuple, list]':
  """(label, N) -> the seeds of `points` (a claims sweep's) that no run in `runs` has, in the
  report's cell order; cells with none missing are left out."""
  have = {(label(r), int(r.get('n_pairs', 0)), int(r.get('seed', 0))) for r in runs}
  missing = OrderedDict()
  for p in points:
    lab = point_label(p)
    if lab is None:
      continue
    n, seed = int(p['n_pairs']), int(p.get('seed', 0))
    if (lab, n, seed) not in have:
      missing.setdefault((lab, n), []).append(seed)
  return OrderedDict(sorted(missing.items(), key=lambda kv: (label_order(kv[0][0]), kv[0][1])))


def progress_of(unfinished: Sequence[dict]) -> dict:
  """(label, N, seed) -> (step, max_steps) of unfinished points (`sweeps.in_progress` rows of
  claims sweeps); the furthest along where several sources hold one."""
  out = {}
  for u in unfinished:
    lab = point_label(u['overrides'])
    if lab is None or 'n_pairs' not in u['overrides']:
      continue
    key = (lab, int(u['overrides']['n_pairs']), int(u['overrides'].get('seed', 0)))
    if key not in out or u['step'] > out[key][0]:
      out[key] = (int(u['step']), u.get('max_steps'))
  return out


def still_to_run_lines(runs: Sequence[dict], points: Sequence[dict], spec: str,
                       progress: Optional[dict] = None) -> list[str]:
  """The still_to_run list; `progress` (progress_of) adds where an unfinished point resumes."""
  progress = progress or {}
  missing = still_to_run(runs, points)
  n_points = sum(point_label(p) is not None for p in points)
  if not missing:
    return [f'Every point of `{spec}` has a run here.']
  total = sum(len(v) for v in missing.values())
  lines = [f'{total} of the {n_points} points of `{spec}` have no run here (a sweep of it runs '
           'every point its sweep dir has not finished):', '']
  def seed_text(lab, n, seed):
    if (lab, n, seed) not in progress:
      return str(seed)
    step, max_steps = progress[(lab, n, seed)]
    return f'{seed} (resumes at step {step:,}' + (f' of {max_steps:,})' if max_steps else ')')

  for (lab, n), seeds in missing.items():
    lines.append(f'- {lab}, N={n}: seed{"s" if len(seeds) > 1 else ""} '
                 f'{", ".join(seed_text(lab, n, s) for s in sorted(seeds))}')
  resuming = sum(k in progress for (lab, n), seeds in missing.items()
                 for k in ((lab, n, s) for s in seeds))
  if resuming:
    lines += ['', f'{resuming} of them {"has" if resuming == 1 else "have"} a checkpoint (a live '
              'run, or a snapshot in an archive '
              'that `experiments.sweep --from_archive` restores): they resume at the step named.']
  return lines


def make_claims_report(runs: Sequence[dict], out_dir: str, title: str = 'KV claims',
                       expect: Optional[tuple] = None, progress: Optional[dict] = None) -> dict:
  """claims.md, claims.csv, runs.csv (a row per run), em_vs_n.png and, where there are K_eval
  results, first-order runs or learning curves, em_vs_k_eval.png, second_vs_first_order.png and
  curves.png in out_dir; expect = (sweep spec, its points): a section listing the points without
  a run (with `progress`, progress_of, where each resumes); returns {'markdown', 'files', 'cells'}."""
  os.makedirs(out_dir, exist_ok=True)
  cs = cells(runs)
  parts = [f'# {title}', '', f'{sum(c["seeds"] for c in cs.values())} runs, {len(cs)} cells. '
           'Cells: best validation EM (%), mean ± std over seeds (std only with 2+ seeds), '
           'seeds, mean steps and minutes per run, and "rising k/n": k of the n runs judged '
           '(a learning curve kept, or stopped at the target EM) were still rising when they '
           'stopped (the best EM of their last quarter of steps beat the best before it by more '
           f'than {100 * RISE:.0f} points). '
           '"supported": the gap exceeds both spreads.',
           '', '## EM vs N', '', em_vs_n_table(cs) if cs else '(no finished runs)', '',
           '## Claims', ''] + claim_lines(cs) + [
               '', '## Runs cut short (still rising at their last steps)', ''] + \
      convergence_lines(cs) + [
          '', '## Runs that fell back (last evaluation far below the best)', '',
          'The cells take each run\'s best evaluation (the parameters it keeps); these runs '
          'diverged or collapsed after it:', ''] + fall_lines(runs)
  kx = k_extrapolation_table(cs)
  if kx:
    parts += ['', '## Test-time K extrapolation (EM at K_eval, mean over seeds)', '', kx]
  if expect is not None:
    parts += ['', '## Still to run', ''] + still_to_run_lines(runs, expect[1], expect[0],
                                                                progress)
  files = []
  for name, plot, alt in (('em_vs_n.png', plot_em_vs_n, 'EM vs N'),
                          ('em_vs_k_eval.png', plot_em_vs_k_eval, 'EM vs K_eval'),
                          ('second_vs_first_order.png', plot_orders, 'second vs first order')):
    fig = os.path.join(out_dir, name)
    if plot(cs, fig):
      parts += ['', f'![{alt}]({name})']
      files.append(fig)
  if plot_curves(runs, os.path.join(out_dir, 'curves.png')):
    parts += ['', '![learning curves](curves.png)']
    files.append(os.path.join(out_dir, 'curves.png'))
  rows = ledger_rows(runs)
  n_ledger = write_ledger_rows(rows, os.path.join(out_dir, 'runs.csv'))
  parts += ['', f'Every run behind the table: `runs.csv` ({n_ledger} rows; a report takes it as '
            'input like a sweep directory).', '', machines_line(rows), ''] + lineage_lines(runs)
  md = '\n'.join(parts) + '\n'
  md_path, csv_path = os.path.join(out_dir, 'claims.md'), os.path.join(out_dir, 'claims.csv')
  with open(md_path, 'w') as f:
    f.write(md)
  with open(csv_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['method', 'n_pairs', 'em_mean', 'em_std', 'seeds', 'steps_mean', 'minutes_mean',
                'paper_em', 'runs_rising', 'runs_with_curves'])
    for (lab, n), c in cs.items():
      w.writerow([lab, n, c['em_mean'], c['em_std'], c['seeds'], c['steps'], c['minutes'],
                  PAPER.get(lab, {}).get(n), c['rising'], c['judged']])
  return {'markdown': md, 'files': [md_path, csv_path, os.path.join(out_dir, 'runs.csv')] + files,
          'cells': cs}


# ------------------------------------------------------------------------------------------------
# The fairness grid (configs/sweeps/claims.py:tune): its table and the settings for TUNED.

TUNED_KEYS = {'gradmem': ('inner_lr', 'lr'), 'rmt': ('memory.rmt_update', 'lr')}


def tuning_report(runs: Sequence[dict], n_pairs: int = 4) -> tuple[str, dict]:
  """(Markdown table of the grid at `n_pairs`, best first per method; TUNED: per method the
  overrides of its best point, ties broken by the earlier best step). Runs at other N (the
  curriculum sources) are listed below the table, not ranked."""
  rows, sources = {}, []
  for r in runs:
    method = r.get('method')
    if method not in TUNED_KEYS:
      continue
    em = r.get('best', {}).get('em')
    setting = {k: r['overrides'].get(k) for k in TUNED_KEYS[method]}
    entry = (em, r.get('best_step'), setting, r.get('steps'), r.get('wall_time_s', 0) / 60)
    if r.get('n_pairs') == n_pairs and em is not None:
      rows.setdefault(method, []).append(entry)
    else:
      sources.append((method, r.get('n_pairs'), entry))
  lines = [f'| method | setting | best EM at N={n_pairs} (%) | best step | steps | minutes |',
           '|---|---|---|---|---|---|']
  tuned = {}
  for method in sorted(rows):
    ranked = sorted(rows[method], key=lambda e: (-e[0], e[1] or 0))
    tuned[method] = dict(ranked[0][2])
    for em, best_step, setting, steps, minutes in ranked:
      text = ', '.join(f'{k}={v}' for k, v in setting.items())
      lines.append(f'| {method} | {text} | {100 * em:.1f} | {best_step} | {steps} | '
                   f'{minutes:.1f} |')
  if sources:
    lines += ['', 'Curriculum sources and other runs (not ranked):', '']
    for method, n, (em, _, setting, steps, minutes) in sorted(sources, key=lambda s: str(s)):
      text = ', '.join(f'{k}={v}' for k, v in setting.items())
      em_text = '-' if em is None else f'{100 * em:.1f}%'
      lines.append(f'- {method} N={n} {text}: {em_text} EM, {steps} steps, {minutes:.1f} min')
  return '\n'.join(lines) + '\n', tuned
