"""The claims report (gradmem_jax/claims.py) on hand-made results, and the claims sweep's
curriculum in N (configs/sweeps/claims.py, sweeps.Sweep.init_from)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from configs.sweeps import claims as claims_cfg
from gradmem_jax import claims, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(method, K, n, seed, em, grad_mode='second', rmt_update=None, kx=None):
  r = {'task': 'kv', 'n_pairs': n, 'method': method, 'K': K, 'seed': seed, 'steps': 1000,
       'wall_time_s': 120.0, 'best': {'em': em}}
  if method == 'gradmem':
    r['grad_mode'] = grad_mode
  else:
    r['rmt_update'] = rmt_update or 'replace'
  if kx:
    r['k_extrapolation'] = [{'K_eval': k, 'em': v} for k, v in kx.items()]
  return r


def _runs():
  out = []
  for s, (g2, r2, g4, r4, f2) in enumerate([(0.90, 0.50, 0.60, 0.55, 0.10),
                                           (0.92, 0.55, 0.70, 0.60, 0.12),
                                           (0.91, 0.52, 0.50, 0.50, 0.11)]):
    out += [_run('gradmem', 1, 2, s, g2, kx={1: g2, 2: g2 + 0.02}), _run('rmt', 1, 2, s, r2),
            _run('gradmem', 1, 4, s, g4), _run('rmt', 1, 4, s, r4),
            _run('gradmem', 1, 2, s, f2, grad_mode='first')]
  out.append(_run('gradmem', 5, 2, 0, 0.99))  # one seed: no spread, no verdict
  out.append(_run('rmt', 5, 2, 0, 0.40))
  out.append({'task': 'kv', 'n_pairs': 2, 'method': 'full_context', 'best': {'em': 1.0}})
  return out


def test_cells_group_seeds_and_keep_only_the_claims_methods():
  other = {'task': 'kv', 'n_pairs': 2, 'method': 'armt', 'best': {'em': 0.5}}
  cs = claims.cells(_runs() + [other])
  assert ('GradMem K=1', 2) in cs and ('RMT x1', 4) in cs
  # The full-context baseline is a row (last), another method is not part of the report.
  assert list(cs)[-1] == ('Full context', 2) and len({lab for lab, _ in cs}) == 6
  c = cs[('GradMem K=1', 2)]
  assert c['seeds'] == 3 and abs(c['em_mean'] - 0.91) < 1e-9
  assert abs(c['em_std'] - 0.0081650) < 1e-6  # population std of 0.90, 0.92, 0.91
  assert cs[('GradMem K=5', 2)]['em_std'] is None
  assert cs[('GradMem K=1', 2)]['k_extrapolation'] == {1: pytest.approx(0.91),
                                                     2: pytest.approx(0.93)}
  assert claims.label({'method': 'rmt', 'K': 2, 'rmt_update': 'residual'}) == 'RMT x2 residual'
  assert claims.label({'method': 'gradmem', 'K': 2, 'grad_mode': 'first'}) == \
      'GradMem K=2 first-order'


def test_verdicts_need_the_gap_to_exceed_both_spreads():
  cs = claims.cells(_runs())
  assert claims.compare(cs[('GradMem K=1', 2)], cs[('RMT x1', 2)]) == 'supported'
  # N=4: GradMem ahead on average (0.60 vs 0.55) but within the spreads.
  assert claims.compare(cs[('GradMem K=1', 4)], cs[('RMT x1', 4)]) == 'not supported'
  assert claims.compare(cs[('GradMem K=5', 2)], cs[('RMT x5', 2)]) == 'ahead'
  assert claims.compare(cs[('RMT x5', 2)], cs[('GradMem K=5', 2)]) == 'behind or equal'
  assert claims.compare(cs[('GradMem K=1', 2)], None) is None


def test_report_files_table_and_claims(tmp_path):
  out = claims.make_claims_report(_runs(), str(tmp_path))
  md = out['markdown']
  assert '| GradMem K=1 | 91.0 ± 0.8 (3 seeds, 1000 steps, 2.0 min) | 60.0 ± 8.2 (3 seeds' in md
  assert '| RMT x1 |' in md and 'paper (same N)' in md and '4: 100' in md
  assert 'N=2: GradMem K=1 91.0 vs RMT x1 52.3 (+38.7): supported' in md
  assert 'N=4: GradMem K=1 60.0 vs RMT x1 55.0 (+5.0): not supported' in md
  assert 'N=2: GradMem K=1 91.0 vs GradMem K=1 first-order 11.0 (+80.0): supported' in md
  # More steps are judged on the seeds both cells have (K=5 has seed 0 only: 0.99 - 0.90), not a
  # one-seed cell against a three-seed mean (0.99 - 0.91).
  assert 'N=2: GradMem 5 vs 1 steps: +9.0 EM (seed 0, paired)' in md
  more = _runs() + [_run('gradmem', 5, 2, 1, 0.95), _run('rmt', 5, 2, 1, 0.5)]
  md2 = claims.make_claims_report(more, str(tmp_path / 'more'))['markdown']
  assert 'N=2: GradMem 5 vs 1 steps: +6.0 ± 3.0 EM (seeds 0, 1, paired)' in md2
  assert 'N=2: RMT 5 vs 1 writes: -7.5 ± 2.5 EM (seeds 0, 1, paired)' in md2
  # A verdict between cells of different seeds says which.
  assert 'N=2: GradMem K=5 97.0 vs RMT x1 52.3' not in md2
  assert ('N=2: GradMem K=1 91.0 vs RMT x1 52.3 (+38.7): supported\n' in md2)
  uneven = [r for r in _runs() if not (r['method'] == 'rmt' and r['seed'] == 2)]
  md3 = claims.make_claims_report(uneven, str(tmp_path / 'uneven'))['markdown']
  assert 'N=2: GradMem K=1 91.0 vs RMT x1 52.5 (+38.5): supported [seeds 0, 1, 2 vs seeds 0, 1]' \
      in md3
  claim2 = md.split('### Claim 2')[1].split('### Claim 3')[0]
  assert 'N=2: GradMem K=5 99.0 vs RMT x5 40.0 (+59.0): ahead' in claim2
  assert 'GradMem K=1 ' not in claim2  # K=1 against x1 is claim 1, not evidence for claim 2
  assert '| GradMem K=1 | 2 | 3 of 3 | 91.0 | 93.0 |' in md  # K extrapolation
  for f in ('claims.md', 'claims.csv', 'em_vs_n.png', 'em_vs_k_eval.png',
            'second_vs_first_order.png', 'runs.csv'):
    assert (tmp_path / f).stat().st_size > 0
  assert '![EM vs K_eval](em_vs_k_eval.png)' in md
  assert '![second vs first order](second_vs_first_order.png)' in md
  # Without K_eval results or first-order runs, those two figures are not drawn.
  bare = [r for r in _runs() if r.get('grad_mode') != 'first' and 'k_extrapolation' not in r]
  claims.make_claims_report(bare, str(tmp_path / 'bare'))
  assert sorted(os.listdir(tmp_path / 'bare')) == ['claims.csv', 'claims.md', 'em_vs_n.png',
                                                   'runs.csv']
  rows = (tmp_path / 'claims.csv').read_text().splitlines()
  assert rows[0].startswith('method,n_pairs,em_mean') and len(rows) == 1 + len(out['cells'])


def test_the_full_context_baselines_beside_the_claims(tmp_path):
  """The transformer and the Mamba reading the whole context: rows of their own (after the
  claims' methods, with the paper's numbers), kept apart by backbone, through the ledger."""
  fc = lambda n, seed, em, backbone=None: dict(
      {'task': 'kv', 'n_pairs': n, 'method': 'full_context', 'seed': seed, 'steps': 500,
       'wall_time_s': 60.0, 'best': {'em': em}}, **({'backbone': backbone} if backbone else {}))
  runs = [_run('gradmem', 1, 4, 0, 0.6), fc(4, 0, 0.99), fc(4, 1, 0.97),
          fc(4, 0, 0.80, 'mamba'), fc(4, 1, 0.70, 'mamba'), fc(8, 0, 0.4, 'mamba'),
          dict(_run('gradmem', 1, 4, 0, 0.3), backbone='mamba'),
          dict(_run('gradmem', 1, 4, 0, 0.1, grad_mode='first'), backbone='mamba')]
  # An evaluation at K_eval of a full-context run (a sweep's --K_eval=2 makes one) is no
  # extrapolation: the baseline has no WRITE steps.
  runs[1]['k_extrapolation'] = [{'K_eval': 2, 'em': 0.99}]
  cs = claims.cells(runs)
  assert list(cs) == [('GradMem K=1', 4), ('GradMem K=1 (Mamba)', 4),
                      ('GradMem K=1 (Mamba) first-order', 4),
                      ('Full context', 4), ('Mamba (full context)', 4), ('Mamba (full context)', 8)]
  assert cs[('Full context', 4)]['k_extrapolation'] == {} and not claims.k_extrapolation_table(cs)
  # The Mamba's second and first order pair up in claim 3's figure.
  assert claims.plot_orders(cs, str(tmp_path / 'orders.png'))
  assert cs[('Mamba (full context)', 4)]['em_mean'] == pytest.approx(0.75)
  out = claims.make_claims_report(runs, str(tmp_path))
  assert '| Full context | 98.0 ± 1.0 (2 seeds, 500 steps, 1.0 min) | - | 4: 100, 8: 100 |' in \
      out['markdown']
  assert '| Mamba (full context) | 75.0 ± 5.0 (2 seeds, 500 steps, 1.0 min) | 40.0 (1 seed, 500 ' \
      'steps, 1.0 min) | 4: 99.9, 8: 98.9 |' in out['markdown']
  back = claims.read_ledger(str(tmp_path / 'runs.csv'))
  assert claims.cells(back).keys() == cs.keys()
  rows = list(csv.DictReader(open(tmp_path / 'runs.csv')))
  assert [(r['label'], r['K'], r['backbone']) for r in rows][3:5] == [
      ('Full context', '', ''), ('Full context', '', '')]
  # A sweep point's label: the backbone from model.kind or the preset that swaps it.
  assert claims.point_label({'n_pairs': 2, 'preset': 'mamba', 'method': 'full_context'}) == \
      'Mamba (full context)'
  assert claims.point_label({'method': 'gradmem', 'K': 1, 'model.kind': 'mamba'}) == \
      'GradMem K=1 (Mamba)'
  assert claims.point_label({'method': 'full_context'}) == 'Full context'


def test_overlay_replaces_only_the_same_method_n_and_seed():
  base = _runs()
  longer = [_run('gradmem', 1, 2, 1, 0.99), _run('gradmem', 1, 2, 7, 0.5)]
  longer[0]['steps'] = 12000
  runs = claims.overlay([base, longer])
  assert len(runs) == len(base) + 1  # seed 1 at N=2 replaced; seed 7 is new
  g2 = [r for r in runs if claims.label(r) == 'GradMem K=1' and r['n_pairs'] == 2]
  assert sorted((r['seed'], r['best']['em']) for r in g2) == [(0, 0.90), (1, 0.99), (2, 0.91),
                                                              (7, 0.5)]
  # Nothing else moved: first order at the same N and seed, and N=4 at seed 1, are the base's.
  kept = [r for r in runs if r not in longer]
  assert kept == [r for r in base if not (claims.label(r) == 'GradMem K=1'
                                          and r['n_pairs'] == 2 and r['seed'] == 1)]
  assert claims.cells(runs)[('GradMem K=1', 2)]['steps'] == (1000 * 2 + 12000 + 1000) / 4
  # One list's own runs are never merged (a grid has many per method, N and seed), and a later
  # list's duplicates replace the earlier list's run, both kept.
  grid = [_run('gradmem', 1, 4, 0, 0.1), _run('gradmem', 1, 4, 0, 0.2)]
  assert claims.overlay([grid]) == grid
  again = [_run('gradmem', 1, 4, 0, 0.3), _run('gradmem', 1, 4, 0, 0.4)]
  assert claims.overlay([grid, again]) == again


def test_the_report_tools_import_no_jax():
  # They run where results are read (a laptop with the archive), not where models train.
  code = ('import sys; import gradmem_jax.claims, gradmem_jax.report, gradmem_jax.sweeps, '
          'gradmem_jax.kv_errors, gradmem_jax.environment; '
          'assert "jax" not in sys.modules, sorted(m for m in sys.modules if m.split(".")[0] == "jax")')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_the_runs_ledger_stands_for_the_runs(tmp_path):
  runs = _runs()
  for r in runs:
    r['best_step'] = 500
  runs[0]['wall_time_s'] = None  # a run whose time was not kept
  runs[1]['machines'] = ['AMD EPYC (avx2)', 'AMD EPYC (avx512f)']  # resumed on another machine
  out = claims.make_claims_report(runs, str(tmp_path))
  back = claims.read_ledger(str(tmp_path / 'runs.csv'))
  assert sorted(r['machine'] for r in back) == [''] * (len(runs) - 1) + [
      'AMD EPYC (avx2) -> AMD EPYC (avx512f)']
  assert ('with the same number of CPUs and the same software, jaxlib and XLA_FLAGS included): '
          'AMD EPYC (avx2) -> AMD EPYC (avx512f): 1 run; not '
          f'recorded (runs from before environment.jsonl): {len(runs) - 1} runs.') in out['markdown']
  assert len(back) == len(runs)  # the full-context baseline included
  want, got = out['cells'], claims.cells(back)
  assert list(got) == list(want)
  for key in want:
    for field in ('em_mean', 'em_std', 'seeds', 'steps', 'minutes', 'timed', 'k_extrapolation'):
      assert got[key][field] == want[key][field], (key, field)
  assert want[('GradMem K=1', 2)]['timed'] == 2 and want[('GradMem K=1', 2)]['minutes'] == 2.0
  assert '(3 seeds, 1000 steps, 2.0 min over 2 timed)' in out['markdown']
  assert claims.cells([dict(runs[0])])[('GradMem K=1', 2)]['minutes'] is None
  assert f'`runs.csv` ({len(back)} rows;' in out['markdown']
  # A report from the ledger alone is the same report.
  again = claims.make_claims_report(back, str(tmp_path / 'again'))
  assert again['markdown'] == out['markdown']
  assert (tmp_path / 'again' / 'runs.csv').read_text() == (tmp_path / 'runs.csv').read_text()


def test_the_ledger_keeps_every_method_setting_and_missing_fields(tmp_path):
  from gradmem_jax.memory import config as memory_config
  assert claims.GRAD_MODES == memory_config.GRAD_MODES
  assert claims.RMT_UPDATES == memory_config.RMT_UPDATES
  from gradmem_jax import report
  from gradmem_jax.models import base
  assert report.DEFAULT_BACKBONE == base.DEFAULT_KIND
  runs = [_run('gradmem', 2, 2, 0, 0.5, grad_mode='none'), _run('rmt', 1, 2, 0, 0.2,
                                                                rmt_update='residual')]
  runs[0]['steps'] = None  # a hand-written row without its steps
  runs[1]['wall_time_s'] = None
  claims.write_ledger(runs, str(tmp_path / 'runs.csv'))
  cs = claims.cells(claims.read_ledger(str(tmp_path / 'runs.csv')))
  assert cs[('GradMem K=2 none-order', 2)]['steps'] is None
  assert cs[('RMT x1 residual', 2)]['steps'] == 1000
  md = claims.make_claims_report(runs, str(tmp_path / 'r'))['markdown']
  assert '50.0 (1 seed, steps not kept, 2.0 min)' in md
  assert '20.0 (1 seed, 1000 steps, minutes not kept)' in md


def test_one_run_per_method_n_and_seed(tmp_path):
  twice = _runs() + [dict(_run('gradmem', 1, 2, 1, 0.3), slug='again')]
  with pytest.raises(ValueError, match=r'two runs of GradMem K=1 at N=2, seed 1 \(.* and again\)'):
    claims.cells(twice)
  rows = claims.ledger_rows(_runs()[:2])
  path = tmp_path / 'runs.csv'
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=claims.LEDGER_FIELDS)
    w.writeheader()
    w.writerows(rows + rows[:1])
  with pytest.raises(ValueError, match=r'line 4: the same run as line 2 \(GradMem K=1, N=2, seed 0\)'):
    claims.read_ledger(str(path))


def test_a_bad_ledger_row_is_an_error_naming_line_and_field(tmp_path):
  good = claims.ledger_rows([_run('gradmem', 1, 2, 0, 0.9), _run('rmt', 2, 4, 1, 0.3)])

  def check(change, match, row=1):
    rows = [dict(r) for r in good]
    rows[row].update(change)
    path = tmp_path / 'runs.csv'
    with open(path, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=claims.LEDGER_FIELDS)
      w.writeheader()
      w.writerows(rows)
    with pytest.raises(ValueError, match=match):
      claims.read_ledger(str(path))

  check({'best_em': '87.5'}, r"line 3, field 'best_em': 87.5 is outside \[0, 1\]")
  check({'seed': ''}, r"line 3, field 'seed': empty")
  check({'K': 'two'}, r"line 3, field 'K': 'two' is not an integer")
  check({'method': 'armt'}, r"line 3, field 'method': 'armt'; allowed")
  check({'method': 'full_context', 'rmt_update': ''},
        r"line 3, field 'label': 'RMT x2' does not match .*'Full context'")
  check({'method': 'full_context', 'label': 'Full context'},
        r"line 3, field 'rmt_update': 'replace' given for a full-context run")
  check({'backbone': 'Mamba 2'}, r"line 3, field 'backbone': 'Mamba 2' is not a backbone")
  check({'K': ''}, r"line 3, field 'K': empty")  # only a full-context row goes without one
  check({'rmt_update': 'add'}, r"line 3, field 'rmt_update': 'add'; allowed")
  check({'grad_mode': 'zeroth'}, r"line 2, field 'grad_mode': 'zeroth'; allowed: \('second'",
        row=0)
  check({'label': 'RMT x1'}, r"line 3, field 'label': 'RMT x1' does not match .*'RMT x2'")
  check({'k_extrapolation': '[1, 2]'}, r"line 3, field 'k_extrapolation': '\[1, 2\]' is not")
  (tmp_path / 'other.csv').write_text('method,n_pairs\ngradmem,2\n')
  with pytest.raises(ValueError, match=r"not a claims runs ledger: missing columns \['label', 'K'"):
    claims.read_ledger(str(tmp_path / 'other.csv'))
  with pytest.raises(ValueError, match='neither a sweep directory nor a runs ledger'):
    claims.load_runs(str(tmp_path / 'absent'))


def test_claims_sweep_curriculum_in_n():
  s = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:cpu_seed0'))
  assert len(s.points) == 8 * 3  # 8 method settings x N in {2, 4, 8}, seed 0
  # Claims 1 and 3 (the K=1 settings) come first, so a partial pass answers them at every N.
  assert [(p['method'], p['K'], p.get('grad_mode', 'second')) for p in s.points[:9:3]] == [
      ('gradmem', 1, 'second'), ('rmt', 1, 'second'), ('gradmem', 1, 'first')]
  n4 = [p for p in s.points if p['n_pairs'] == 4 and p['method'] == 'rmt' and p['K'] == 5][0]
  src = s.init_from[sweeps.slug(n4)]
  assert src == sweeps.slug(dict(n4, n_pairs=2))  # same method and seed, previous N
  assert not any(p['n_pairs'] == 2 and sweeps.slug(p) in s.init_from for p in s.points)
  cmd = sweeps.point_command('configs/kv_retrieval.py', s, n4, '/sd')
  assert cmd[-1] == f'--config.train.init_from=/sd/{src}'
  sweeps.validate_points('configs/kv_retrieval.py', s)  # every point's config builds
  # The seeds variant is a part of `cpu`: the same point names and curriculum sources, so the two
  # share a sweep dir and neither reruns the other's points.
  full = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:cpu'))
  seeds = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:k1_seeds'))
  assert len(seeds.points) == 3 * 2 * 2  # the 3 K=1 settings x N in {2, 4} x seeds 1-2
  full_slugs = [sweeps.slug(p) for p in full.points]
  for p in seeds.points:
    assert p['K'] == 1 and p['seed'] in (1, 2) and p['n_pairs'] in (2, 4)
    assert sweeps.slug(p) in full_slugs
    assert seeds.init_from.get(sweeps.slug(p)) == full.init_from.get(sweeps.slug(p))
  assert (seeds.name, seeds.base) == (full.name, full.base)
  # Claim 2's seeds likewise: GradMem K=2 (second order) and RMT x2, seed 1's four runs first.
  k2 = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:k2_seeds'))
  assert [(p['seed'], p['method'], p['n_pairs']) for p in k2.points] == [
      (s, m, n) for s in (1, 2) for m in ('gradmem', 'rmt') for n in (2, 4)]
  for p in k2.points:
    assert p['K'] == 2 and p.get('grad_mode', 'second') == 'second'
    assert sweeps.slug(p) in full_slugs
    assert k2.init_from.get(sweeps.slug(p)) == full.init_from.get(sweeps.slug(p))
  assert (k2.name, k2.base) == (full.name, full.base)
  k5 = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:k5_seed0'))
  assert [(p['method'], p['K'], p['n_pairs'], p['seed']) for p in k5.points] == [
      (m, 5, n, 0) for m in ('gradmem', 'rmt') for n in (2, 4)]
  for p in k5.points:
    assert sweeps.slug(p) in full_slugs
    assert k5.init_from.get(sweeps.slug(p)) == full.init_from.get(sweeps.slug(p))
  assert (k5.name, k5.base) == (full.name, full.base)
  k5s = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:k5_seeds'))
  assert [(p['method'], p['K'], p['n_pairs'], p['seed']) for p in k5s.points] == [
      (m, 5, n, s) for s in (1, 2) for m in ('gradmem', 'rmt') for n in (2, 4)]
  for p in k5s.points:
    assert sweeps.slug(p) in full_slugs
    assert k5s.init_from.get(sweeps.slug(p)) == full.init_from.get(sweeps.slug(p))
  assert (k5s.name, k5s.base) == (full.name, full.base)
  tune = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:tune'))
  assert len(tune.points) == 5 + 5 * 3  # 5 N=2 sources, each with 3 outer lrs at N=4
  for p in tune.points:
    if p['n_pairs'] == 4:  # started from its own method's (inner lr's, update mode's) N=2 run
      assert tune.init_from[sweeps.slug(p)] == sweeps.slug(dict(p, n_pairs=2, lr=1e-3))
    else:
      assert sweeps.slug(p) not in tune.init_from
  sweeps.validate_points('configs/kv_retrieval.py', tune)
  # GradMem K=1 at RMT's step budget, its own sweep (the report overlays it on `cpu`).
  eb = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:equal_budget'))
  assert [(p['seed'], p['n_pairs']) for p in eb.points] == [(1, 2), (1, 4), (2, 2), (2, 4),
                                                             (0, 2), (0, 4)]
  for p in eb.points:
    assert (p['method'], p['K'], p.get('grad_mode', 'second')) == ('gradmem', 1, 'second')
    assert p['max_steps'] == claims_cfg.TUNED['rmt']['max_steps'] == 12000
    assert {k: p[k] for k in ('inner_lr', 'lr')} == claims_cfg.TUNED['gradmem']
    if p['n_pairs'] == 4:
      assert eb.init_from[sweeps.slug(p)] == sweeps.slug(dict(p, n_pairs=2))
  assert eb.base == full.base and eb.name != full.name
  sweeps.validate_points('configs/kv_retrieval.py', eb)
  depth = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:depth'))
  assert [(p['method'], p['n_pairs']) for p in depth.points] == [
      ('gradmem', 2), ('gradmem', 4), ('rmt', 2), ('rmt', 4)]
  assert 'model.num_layers=4' in depth.base
  sweeps.validate_points('configs/kv_retrieval.py', depth)
  # Claim 3's baseline over inner lr (first order took second order's in `cpu`), K=1 first.
  tfo = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:tune_first_order'))
  assert [(p['K'], p['inner_lr']) for p in tfo.points] == [
      (k, x) for k in (1, 2) for x in (0.04, 0.1, 0.3, 1.0, 3.0, 10.0)]
  for p in tfo.points:
    assert (p['method'], p['grad_mode'], p['n_pairs'], p['seed']) == ('gradmem', 'first', 2, 0)
    assert p['lr'] == claims_cfg.TUNED['gradmem']['lr']
  assert tfo.base == full.base and not tfo.init_from and tfo.name != full.name
  sweeps.validate_points('configs/kv_retrieval.py', tfo)
  # The full-context baselines: a transformer and a Mamba per N and seed, the same curriculum.
  bl = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:baselines'))
  assert [(p['n_pairs'], p.get('preset'), p['seed']) for p in bl.points] == [
      (n, pre, seed) for seed in (0, 1, 2) for pre in (None, 'mamba') for n in (2, 4, 8)]
  assert all(p['method'] == 'full_context' for p in bl.points)
  assert bl.init_from[sweeps.slug(bl.points[4])] == sweeps.slug(bl.points[3])  # Mamba 4 <- 2
  assert len(bl.init_from) == 12 and bl.base == full.base and bl.name != full.name
  sweeps.validate_points('configs/kv_retrieval.py', bl)
  # RMT runs with the projection its forward writer needs on the CPU model; the paper variant
  # keeps the paper's recipe (nothing CPU-tuned on top of paper_n16).
  assert all(p['memory.mem_proj'] == 'proj' for p in s.points if p['method'] == 'rmt')
  paper = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/claims.py:paper'))
  assert not any({'lr', 'inner_lr', 'max_steps', 'memory.mem_proj'} & set(p) for p in paper.points)
  sweeps.validate_points('configs/kv_retrieval.py', paper)


def test_a_point_whose_curriculum_source_failed_is_not_run(tmp_path):
  sweep_file = tmp_path / 'two.py'
  sweep_file.write_text(
      'from gradmem_jax.sweeps import Sweep\n'
      'def get_sweep(arg=None):\n'
      '  return Sweep("two", [{"n_pairs": 2}, {"n_pairs": 4}], init_from={"n_pairs=4": "n_pairs=2"})\n')
  s = sweeps.load_sweep(str(sweep_file))
  # A module that does not exist: the source point fails at once, the user point is not started.
  status = sweeps.run_sweep('configs/kv_retrieval.py', s, str(tmp_path / 'sd'),
                            module='experiments.no_such_module', log=lambda _: None, cwd=ROOT)
  assert status[0]['status'].startswith('failed')
  assert status[1]['status'] == 'blocked (source n_pairs=2 unfinished)'
  assert json.load(open(tmp_path / 'sd' / 'sweep.json'))['init_from'] == {'n_pairs=4': 'n_pairs=2'}
  bad = tmp_path / 'bad.py'
  bad.write_text(
      'from gradmem_jax.sweeps import Sweep\n'
      'def get_sweep(arg=None):\n'
      '  return Sweep("bad", [{"n_pairs": 4}, {"n_pairs": 2}], init_from={"n_pairs=4": "n_pairs=2"})\n')
  with pytest.raises(ValueError, match="starts from 'n_pairs=2', which comes after it"):
    sweeps.load_sweep(str(bad))


def test_still_to_run_lists_the_points_without_a_run():
  points = [dict(n_pairs=n, method=m, K=k, seed=seed, **extra)
            for seed in (0, 1, 2) for n in (2, 4)
            for m, k, extra in (('gradmem', 1, {}), ('rmt', 1, {'memory.rmt_update': 'replace'}),
                                ('gradmem', 1, {'grad_mode': 'first'}),
                                ('rmt', 2, {'memory.rmt_update': 'residual'}))]
  points.append(dict(n_pairs=2, method='full_context', seed=0))  # a baseline row; _runs() has it
  points.append(dict(n_pairs=2, method='armt', seed=0))  # not a method of the report: ignored
  # _runs() has every K=1 setting at N=2 and 4 over 3 seeds except first order at N=4; RMT x1's
  # seed 1 at N=2 is taken out
  runs = [r for r in _runs() if (r['method'], r.get('K'), r['n_pairs'], r.get('seed')) != (
      'rmt', 1, 2, 1)]
  missing = claims.still_to_run(runs, points)
  assert list(missing.items()) == [(('RMT x1', 2), [1]),
                                   (('RMT x2 residual', 2), [0, 1, 2]),
                                   (('RMT x2 residual', 4), [0, 1, 2]),
                                   (('GradMem K=1 first-order', 4), [0, 1, 2])]
  lines = claims.still_to_run_lines(runs, points, 'sweep.py:x')
  assert lines[0].startswith('10 of the 25 points of `sweep.py:x` have no run here')
  assert '- RMT x1, N=2: seed 1' in lines
  assert '- RMT x2 residual, N=2: seeds 0, 1, 2' in lines
  done = [p for p in points if p.get('K') == 1 and p.get('grad_mode') != 'first' or
          (p.get('grad_mode') == 'first' and p['n_pairs'] == 2)]
  assert claims.still_to_run_lines(_runs(), done, 's') == ['Every point of `s` has a run here.']


def test_claims_command_line(tmp_path):
  sd = tmp_path / 'sd'
  for i, r in enumerate(_runs()):
    os.makedirs(sd / f'p{i}')
    with open(sd / f'p{i}' / 'results.json', 'w') as f:
      json.dump(r, f)
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '## Claims' in out.stdout and (sd / 'claims.md').exists()
  # Two unfinished points: one with an archived snapshot (sweeps.archive_unfinished), one live
  # run with a complete checkpoint; the list says where each resumes.
  rmt5 = {'method': 'rmt', 'K': 5, 'memory.rmt_update': 'replace', 'n_pairs': 8}
  with open(sd / 'sweep.json', 'w') as f:
    json.dump({'points': [{'slug': 'snap', 'overrides': dict(rmt5, seed=1)},
                          {'slug': 'live', 'overrides': dict(rmt5, seed=2)}]}, f)
  os.makedirs(sd / 'snap')
  with open(sd / 'snap' / 'unfinished.json', 'w') as f:
    json.dump({'step': 7750, 'max_steps': 12000}, f)
  os.makedirs(sd / 'live' / 'checkpoints' / '500')
  (sd / 'live' / 'checkpoints' / '500' / 'commit_success.txt').write_text('')
  (sd / 'live' / 'run.lock').write_text('')  # a run directory (an archive has no lock file)
  os.makedirs(sd / 'live' / 'checkpoints' / '750')  # still being written: not resumable
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd}',
                        f'--out={tmp_path / "exp"}', '--expect=configs/sweeps/claims.py:cpu'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '## Still to run' in out.stdout
  assert ('- RMT x5, N=8: seeds 0, 1 (resumes at step 7,750 of 12,000), 2 (resumes at step '
          '500)') in out.stdout
  assert '2 of them have a checkpoint' in out.stdout
  shutil.rmtree(sd / 'snap'), shutil.rmtree(sd / 'live'), os.remove(sd / 'sweep.json')
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd}',
                        f'--out={tmp_path / "exp"}', '--expect=configs/sweeps/claims.py:nope'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "--expect=configs/sweeps/claims.py:nope: unknown variant" in \
      out.stderr, out.stderr[-2000:]
  # Two sweep dirs: the second's run replaces the first's GradMem K=1, N=2, seed 0.
  sd2 = tmp_path / 'sd2'
  os.makedirs(sd2 / 'long')
  with open(sd2 / 'long' / 'results.json', 'w') as f:
    json.dump(dict(_run('gradmem', 1, 2, 0, 0.30), steps=12000), f)
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd},{sd2}',
                        f'--out={tmp_path / "both"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '| GradMem K=1 | 71.0 ± 29.0 (3 seeds, 4667 steps' in out.stdout
  assert '| GradMem K=1 | 2 | 2 of 3 | 91.5 | 93.5 |' in out.stdout  # the new run has no K_eval
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd},{sd}/nope',
                        f'--out={tmp_path / "x"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and 'nope' in out.stderr and 'is neither a directory' in out.stderr
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd},{sd2}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and '--out is required' in out.stderr
  # The ledger the report wrote stands for the run directories: with them gone, the ledger and
  # the second sweep give the same report as the two sweeps did.
  both = (tmp_path / 'both' / 'claims.md').read_text()
  ledger = tmp_path / 'kept.csv'
  shutil.copy(sd / 'runs.csv', ledger)
  shutil.rmtree(sd)
  out = subprocess.run([sys.executable, '-m', 'experiments.claims',
                        f'--sweep_dir={ledger},{sd2}', f'--out={tmp_path / "again"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (tmp_path / 'again' / 'claims.md').read_text() == both


def test_test_time_write_scoring_by_hand():
  """experiments/test_time_write.py's metrics on hand-made logits: two items with two candidate
  answers each (candidate 0 is the right one)."""
  import numpy as np
  from experiments import test_time_write as ttw
  Item = ttw.Item
  items = [Item(np.array([5]), np.array([1]), [np.array([2, 3]), np.array([4])], 'a'),
           Item(np.array([5]), np.array([1]), [np.array([4]), np.array([2])], 'b')]
  rows, owner, cand, start, length = ttw.candidate_rows(items, [it.query for it in items])
  assert [r.tolist() for r in rows] == [[1, 2, 3], [1, 4], [1, 4], [1, 2]]
  assert owner.tolist() == [0, 0, 1, 1] and start.tolist() == [1, 1, 1, 1]
  qa, _ = ttw.pad(rows, 0)
  logits = np.zeros((4, 3, 6))
  logits[0, 1, 2] = logits[0, 2, 3] = 5.0    # item 0, right answer: both tokens argmax
  logits[1, 1, 4] = 20.0                     # item 0, wrong answer: far more likely (choice miss)
  logits[3, 1, 4] = 3.0                      # item 1, wrong answer 2 made unlikely; the right
  #                                            answer 4 is not the argmax of its flat row (EM miss)
  out = ttw.scored(logits, qa, owner, cand, start, length)
  assert out['em'] == [1.0, 0.0] and out['token_acc'] == [1.0, 0.0]
  assert out['choice_acc'] == [0.0, 1.0]
  nll0 = -(5.0 - np.log(np.exp(5.0) + 5))    # each position: one logit 5, five logits 0
  assert out['answer_nll'][0] == pytest.approx(nll0)


def test_babi_table2_sweep_points():
  s = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/babi_table2.py'))
  assert len(s.points) == 5 * 5 and s.base == 'gpt2'
  qa3 = [p for p in s.points if p['task_id'] == 3]
  assert qa3 and all(p['max_story_sentences'] == 100 for p in qa3)
  assert not any('max_story_sentences' in p for p in s.points if p['task_id'] != 3)
  from configs import babi
  c = babi.get_config('gpt2,hf_checkpoint=/nowhere,' + sweeps.config_arg('x', s, qa3[0])
                      .partition(':')[2].replace('gpt2,', '', 1))
  assert (c.data.task_id, c.data.max_story_sentences, c.memory.inner_lr) == (3, 100, 0.4)
  cpu = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/babi_table2.py:cpu'))
  assert len(cpu.points) == 5 * 3 and 'minutes=10' in cpu.base
  assert all(p['memory.mem_proj'] == 'proj' for p in cpu.points if p['method'] == 'rmt')
  sweeps.validate_points('configs/babi.py', cpu)


def test_babi_curriculum_sweep_chains_story_lengths_per_method():
  s = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/babi_curriculum.py'))
  assert [(p['method'], p['max_story_sentences']) for p in s.points] == [
      (m, c) for m in ('gradmem', 'rmt', 'full_context') for c in (2, 4, 0)]
  for p in s.points:  # each later stage starts from the same method's previous stage
    src = s.init_from.get(sweeps.slug(p))
    if p['max_story_sentences'] == 2:
      assert src is None
    else:
      prev = {4: 2, 0: 4}[p['max_story_sentences']]
      assert [q for q in s.points if sweeps.slug(q) == src][0] == dict(
          p, max_story_sentences=prev, max_steps={2: 4000, 4: 3000}[prev])
  sweeps.validate_points('configs/babi.py', s)
  assert all(p['task_id'] == 3 for p in
             sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/babi_curriculum.py:qa:3')).points)
  with pytest.raises(ValueError, match='qa:1 .. qa:5'):
    sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/babi_curriculum.py:qa:9'))


def test_tuning_report_ranks_the_grid_and_names_the_tuned_settings(tmp_path):
  def run(method, n, em, best_step, **overrides):
    return {'method': method, 'n_pairs': n, 'best': {'em': em}, 'best_step': best_step,
            'steps': 2000, 'wall_time_s': 120.0,
            'overrides': dict(n_pairs=n, method=method, K=1, **overrides)}
  runs = [run('gradmem', 2, 0.9, 2000, inner_lr=1.0, lr=1e-3),        # a source: not ranked
          run('gradmem', 4, 0.40, 2000, inner_lr=0.3, lr=1e-3),
          run('gradmem', 4, 0.55, 1500, inner_lr=1.0, lr=3e-3),
          run('gradmem', 4, 0.55, 1000, inner_lr=3.0, lr=1e-3),        # tie: the earlier best wins
          run('rmt', 4, 0.20, 500, **{'memory.rmt_update': 'replace', 'lr': 1e-3}),
          run('rmt', 4, 0.25, 2000, **{'memory.rmt_update': 'residual', 'lr': 3e-4}),
          run('full_context', 4, 1.0, 100)]                             # not a tuned method
  table, tuned = claims.tuning_report(runs)
  assert tuned == {'gradmem': {'inner_lr': 3.0, 'lr': 1e-3},
                   'rmt': {'memory.rmt_update': 'residual', 'lr': 3e-4}}
  rows = [l for l in table.splitlines() if l.startswith('| gradmem')]
  assert [r.split('|')[2].strip() for r in rows] == [
      'inner_lr=3.0, lr=0.001', 'inner_lr=1.0, lr=0.003', 'inner_lr=0.3, lr=0.001']
  assert 'gradmem N=2 inner_lr=1.0, lr=0.001: 90.0% EM' in table and 'full_context' not in table
  # From a sweep dir, as real runs write it: results.json with K and seed (so the grid's points
  # share a method label, N and seed), the overrides in sweep.json. Every point is ranked.
  sd = tmp_path / 'sd'
  points = []
  for i, r in enumerate(runs):
    os.makedirs(sd / f'p{i}')
    with open(sd / f'p{i}' / 'results.json', 'w') as f:
      json.dump(dict({k: v for k, v in r.items() if k != 'overrides'}, K=1, seed=0), f)
    points.append({'slug': f'p{i}', 'overrides': r['overrides']})
  with open(sd / 'sweep.json', 'w') as f:
    json.dump({'points': points}, f)
  out = subprocess.run([sys.executable, '-m', 'experiments.claims', f'--sweep_dir={sd}',
                        '--tuning'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (sd / 'tuning.md').exists() and repr(tuned) in out.stdout
  assert (sd / 'tuning.md').read_text() == '# KV claims: fairness grid\n\n' + table + \
      f'\nTUNED = {tuned!r}\n'


def _curve_run(method, K, n, seed, curve, stop_reason='max_steps'):
  r = _run(method, K, n, seed, max(em for _, em in curve))
  r['em_curve'], r['stop_reason'] = curve, stop_reason
  return r


def test_learning_curves_say_which_runs_were_cut_short(tmp_path, monkeypatch):
  # From metrics.jsonl: a resumed run logged steps 1000-1500 twice; the later record (the one the
  # run went on from) wins; training records without val/em are not part of the curve.
  run_dir = tmp_path / 'sweep' / 'n_pairs=2,method=gradmem,K=1,seed=0'
  run_dir.mkdir(parents=True)
  recs = [{'step': 500, 'loss': 2.0}, {'step': 500, 'val/em': 0.2}, {'step': 1000, 'val/em': 0.3},
          {'step': 1500, 'val/em': 0.9}, {'step': 1000, 'val/em': 0.35},
          {'step': 1500, 'val/em': 0.4}, {'step': 2000, 'val/em': 0.6}]
  (run_dir / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in recs) + '\n')
  assert claims.em_curve(str(run_dir / 'metrics.jsonl')) == [(500, 0.2), (1000, 0.35),
                                                             (1500, 0.4), (2000, 0.6)]
  assert claims.em_curve(str(tmp_path / 'absent.jsonl')) == []
  (tmp_path / 'bad.jsonl').write_text('{"step": 1}\n{"step": 2, "val/em\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r'bad.jsonl, line 2: not a metrics record'):
    claims.em_curve(str(tmp_path / 'bad.jsonl'))
  for bad in ('[1, 2]', '{"val/em": 0.5}', '{"step": 1, "val/em": null}'):
    (tmp_path / 'bad.jsonl').write_text(bad + '\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r'bad.jsonl, line 1: not a metrics record'):
      claims.em_curve(str(tmp_path / 'bad.jsonl'))
  (tmp_path / 'bad.jsonl').write_bytes(b'{"step": 1, "val/em": 0.5}\n\xff\xfe\n')
  with pytest.raises(ValueError, match=r'bad.jsonl, line 2: not a metrics record'):
    claims.em_curve(str(tmp_path / 'bad.jsonl'))
  # A torn last line (no newline after it: a machine gone mid-write) is left out, with a warning.
  (tmp_path / 'torn.jsonl').write_text('{"step": 500, "val/em": 0.5}\n{"step": 1000, "val/')
  with pytest.warns(UserWarning, match='torn last line'):
    assert claims.em_curve(str(tmp_path / 'torn.jsonl')) == [(500, 0.5)]
  (run_dir / 'results.json').write_text(json.dumps(
      {'task': 'kv', 'n_pairs': 2, 'method': 'gradmem', 'K': 1, 'grad_mode': 'second',
       'seed': 0, 'steps': 2000, 'best': {'em': 0.6}}))
  loaded = claims.load_runs(str(tmp_path / 'sweep'))
  assert loaded[0]['em_curve'] == [(500, 0.2), (1000, 0.35), (1500, 0.4), (2000, 0.6)]

  # The verdict: the best of the last quarter of steps against the best before it.
  flat = [(500 * i, e) for i, e in enumerate([0.5, 0.9, 0.93, 0.95, 0.94, 0.95, 0.96, 0.95], 1)]
  climb = [(500 * i, e) for i, e in enumerate([0.3, 0.4, 0.45, 0.5, 0.5, 0.52, 0.6, 0.7], 1)]
  assert claims.convergence({'em_curve': flat}) == 'plateau'  # +1 point: within RISE
  assert claims.convergence({'em_curve': climb}) == 'rising'
  assert claims.convergence({'em_curve': climb, 'stop_reason': 'target EM 0.99 reached'}) == \
      'target'
  assert claims.convergence({'em_curve': climb[-1:]}) is None  # too short to judge
  assert claims.convergence({}) is None  # no curve kept
  # At the threshold: a gain of exactly RISE is a plateau, a little more is rising.
  edge = lambda gain: [(1000, 0.5), (2000, 0.6), (3000, 0.6), (4000, 0.6 + gain)]
  assert claims.convergence({'em_curve': edge(0.0199)}) == 'plateau'
  assert claims.convergence({'em_curve': edge(0.0201)}) == 'rising'
  with monkeypatch.context() as m:  # RISE exactly representable: a gain of RISE is no rise
    m.setattr(claims, 'RISE', 0.25)
    assert claims.convergence({'em_curve': [(1, 0.25), (2, 0.5), (3, 0.5), (4, 0.75)]}) == \
        'plateau'

  runs = [_curve_run('gradmem', 1, 2, 0, flat), _curve_run('gradmem', 1, 2, 1, climb),
          _run('gradmem', 1, 2, 2, 0.5), _curve_run('rmt', 1, 2, 0, climb),
          _curve_run('rmt', 1, 2, 1, climb, stop_reason='target EM 0.7 reached')]
  cs = claims.cells(runs)
  assert (cs[('GradMem K=1', 2)]['rising'], cs[('GradMem K=1', 2)]['judged'],
          cs[('GradMem K=1', 2)]['rising_seeds']) == (1, 2, [1])
  out = claims.make_claims_report(runs, str(tmp_path / 'report'))
  md = out['markdown']
  assert '(3 seeds, 1000 steps, 2.0 min; rising 1/2)' in md
  assert '- GradMem K=1, N=2: seed 1 still rising (1 of 2 judged)' in md
  assert '- RMT x1, N=2: seed 0 still rising (1 of 2 judged)' in md  # seed 1 reached its target
  assert '4 of 5 runs judged; 4 have a learning curve' in md
  assert '![learning curves](curves.png)' in md and (tmp_path / 'report' / 'curves.png').exists()
  rows = list(csv.DictReader(open(tmp_path / 'report' / 'claims.csv')))
  assert (rows[0]['runs_rising'], rows[0]['runs_with_curves']) == ('1', '2')
  # The ledger keeps curves and stop reasons: a report from it is the same report.
  back = claims.read_ledger(str(tmp_path / 'report' / 'runs.csv'))
  assert [claims.convergence(r) for r in back] == [claims.convergence(r) for r in runs
                                                   if r['method'] == 'gradmem'] + [
      'rising', 'target']
  again = claims.make_claims_report(back, str(tmp_path / 'again'))
  assert again['markdown'] == md
  # A ledger written before those columns existed still reads, as runs without curves.
  old = tmp_path / 'old.csv'
  with open(old, 'w', newline='') as f:
    keep = [k for k in claims.LEDGER_FIELDS if k not in claims.OPTIONAL_LEDGER_FIELDS]
    w = csv.DictWriter(f, fieldnames=keep, extrasaction='ignore')
    w.writeheader()
    w.writerows(claims.ledger_rows(runs))
  old_cells = claims.cells(claims.read_ledger(str(old)))
  assert old_cells[('GradMem K=1', 2)]['judged'] == 0
  assert 'rising' not in claims.em_vs_n_table(old_cells)
  assert claims.convergence_lines(old_cells)[0].startswith('- no run could be judged')
  # No curves at all: no figure.
  assert not claims.plot_curves(claims.read_ledger(str(old)), str(tmp_path / 'none.png'))


def test_runs_that_fell_back_after_their_best_are_named(tmp_path):
  # GradMem K=5 at N=2, seed 2's shape: a best, then a collapse by the last evaluation.
  collapse = [(500, 0.46), (1000, 0.67), (3000, 0.855), (3500, 0.066), (4000, 0.034)]
  wobble = [(500, 0.5), (1000, 0.9), (1500, 0.75)]  # 15 points below its best: within FALL
  assert claims.fell_back({'em_curve': collapse}) == (3000, 0.855, 4000, 0.034)
  assert claims.fell_back({'em_curve': wobble}) is None
  assert claims.fell_back({'em_curve': collapse[:1]}) is None and claims.fell_back({}) is None
  edge = lambda drop: {'em_curve': [(1, 0.5), (2, 0.5 - drop)]}
  assert claims.fell_back(edge(0.19)) is None and claims.fell_back(edge(0.21)) is not None
  runs = [_curve_run('gradmem', 5, 2, 2, collapse), _curve_run('gradmem', 5, 2, 0, wobble),
          _curve_run('rmt', 1, 4, 1, collapse)]
  md = claims.make_claims_report(runs, str(tmp_path / 'r'))['markdown']
  section = md.split('## Runs that fell back')[1].split('##')[0]
  # in the cells' order (GradMem before RMT), the cell itself still takes the best evaluation
  assert ('- GradMem K=5, N=2, seed 2: best 85.5% at step 3000, 3.4% at its last evaluation '
          '(step 4000)\n- RMT x1, N=4, seed 1: best 85.5% at step 3000') in section
  assert 'seed 0' not in section
  assert claims.fall_lines([_curve_run('gradmem', 5, 2, 0, wobble)]) == [
      '- none: no run with a learning curve ended more than 20 points below its best']


def test_a_bad_learning_curve_in_a_ledger_names_line_and_field(tmp_path):
  rows = claims.ledger_rows([_curve_run('gradmem', 1, 2, 0, [(500, 0.5), (1000, 0.6)])])
  for bad, match in (('[[500, 50.0]]', r"line 2, field 'em_curve': EM 50.0 at step 500 is outside"),
                     ('[[500, 0.5], [500, 0.6]]', r"line 2, field 'em_curve': step 500 after step "
                      r"500; the steps must increase"),
                     ('{"500": 0.5}', r"line 2, field 'em_curve': .* is not a JSON list"),
                     ('[500, 0.5]', r"line 2, field 'em_curve': .* is not a JSON list")):
    path = tmp_path / 'runs.csv'
    with open(path, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=claims.LEDGER_FIELDS)
      w.writeheader()
      w.writerows([dict(rows[0], em_curve=bad)])
    with pytest.raises(ValueError, match=match):
      claims.read_ledger(str(path))
  (tmp_path / 'nul.csv').write_text(','.join(claims.LEDGER_FIELDS) + '\n' + 'x' * 200000 + '\n')
  with pytest.raises(ValueError, match=r'nul.csv: not a readable CSV file'):
    claims.read_ledger(str(tmp_path / 'nul.csv'))


def test_a_chain_that_mixes_runs_is_named(tmp_path):
  """A curriculum run records the checksum of the parameters it loaded; a report whose source
  run has other best parameters (the source ran again after it) names the chain."""
  runs = _runs()
  for r in runs:
    r['slug'] = f'{r["method"]},K={r.get("K")},n={r["n_pairs"]},s={r.get("seed", 0)},' \
                f'{r.get("grad_mode", "")}'
  src = {r['seed']: r for r in runs if r['method'] == 'gradmem' and r['n_pairs'] == 2
         and r['K'] == 1 and r['grad_mode'] == 'second'}
  for s, r in src.items():
    r['best_params_checksum'] = 100.0 + s
  for r in runs:
    if r['n_pairs'] == 4:  # N = 4 grew from N = 2 of the same method and seed
      (source,) = [x for x in runs if x['n_pairs'] == 2 and x['method'] == r['method']
                   and x.get('K') == r.get('K') and x.get('grad_mode') == r.get('grad_mode')
                   and x['seed'] == r['seed']]
      r['init_from'] = {'path': f'/sweeps/claims/{source["slug"]}', 'part': None,
                        'params_checksum': 555.0}
  g4 = {r['seed']: r for r in runs if r['method'] == 'gradmem' and r['n_pairs'] == 4}
  g4[0]['init_from']['params_checksum'] = 100.0      # the run shown: checks out
  g4[1]['init_from'].update(params_checksum=999.0, step=4000)  # another run of its source
  src[1]['best_step'] = 3500
  g4[2]['init_from']['params_checksum'] = None       # not recorded
  lines = claims.lineage_lines(runs)
  assert lines[0] == ('Curriculum chains: 1 run grew from the best parameters of the run shown '
                      'for their source; 1 from other parameters; 4 not checked (a source not in '
                      'this report or named twice, or runs from before the checksums were '
                      'recorded).')
  assert len(lines) == 3 and lines[2].startswith('- **GradMem K=1, N=4, seed 1** grew from other '
                                                 'parameters than the best of the run shown')
  assert '(checksum 999.0, the run shown: 101.0; it loaded step 4000, the run shown keeps step ' \
         '3500)' in lines[2]
  # Two runs named as seed 0's source (two sweeps merged): that chain is not checked.
  twin = dict(src[0], seed=7, best_params_checksum=7.0)
  assert claims.lineage_lines(runs + [twin])[0].startswith(
      'Curriculum chains: 0 runs grew from the best parameters of the run shown for their '
      'source; 1 from other parameters; 5 not checked')
  # A part of a run (init_from_part) is not the source's whole best: not checked.
  g4[0]['init_from']['part'] = 'backbone'
  assert claims.lineage_lines(runs)[0].startswith('Curriculum chains: 0 runs grew')
  g4[0]['init_from']['part'] = None
  # The ledger keeps what the check needs: a report from it says the same.
  out = claims.make_claims_report(runs, str(tmp_path))
  assert '\n'.join(lines) in out['markdown']
  back = claims.read_ledger(str(tmp_path / 'runs.csv'))
  assert claims.lineage_lines(back) == lines
  again = claims.make_claims_report(back, str(tmp_path / 'again'))
  assert again['markdown'] == out['markdown']
