r"""Rebuilds lost_runs.csv: one ledger row per claims run whose run directory did not survive its
machine (seeds 0-2 of the K=1 settings at N = 2, 4; seed 0's other points), from the claims.csv
files that git kept of each stage of the sweep. Seed 0's runs finished first (commits ebc4bdc,
25133d2, a481c38: one seed per cell, so the cell is the run), seed 1 of the K=1 settings next
(21bce43: two-seed means), then seed 2 (f9ff6dc: three-seed means), so
  seed 1 = 2 * mean(21bce43) - seed 0,   seed 2 = 3 * mean(f9ff6dc) - 2 * mean(21bce43)
for the best EM (a multiple of 1/1000 on the 1,000-sample validation set; rounded back to it)
and the minutes. Every run of a cell ran its whole budget (the mean steps equal the cap), so
steps are the cap. Unknown and left blank: best step, and K extrapolation (evaluated for seeds 1
and 2 only as a two-seed mean). Checked: the rows give back f9ff6dc's means and spreads.
The same for the one finished run of claims.py:equal_budget (GradMem K=1, seed 1, 12,000 steps,
N = 2 and 4), into ../claims_equal_budget/lost_runs.csv.

  python benchmarks/results/claims_cpu/lost_runs_from_history.py   # from the repository root
"""
import csv
import io
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from gradmem_jax import claims  # noqa: E402
CSV = 'benchmarks/results/claims_cpu/claims.csv'
METHOD = {'GradMem K=1': ('gradmem', 1, 'second', ''), 'GradMem K=2': ('gradmem', 2, 'second', ''),
          'GradMem K=1 first-order': ('gradmem', 1, 'first', ''),
          'RMT x1': ('rmt', 1, '', 'replace'), 'RMT x2': ('rmt', 2, '', 'replace')}


def cells_at(commit, path=CSV):
  text = subprocess.run(['git', 'show', f'{commit}:{path}'], capture_output=True, text=True,
                        check=True).stdout
  return {(r['method'], int(r['n_pairs'])): r for r in csv.DictReader(io.StringIO(text))}


def main():
  seed0 = cells_at('a481c38')    # every seed-0 point that finished (one seed per cell)
  two = cells_at('21bce43')      # + seed 1 of the K=1 settings at N = 2, 4
  three = cells_at('f9ff6dc')    # + seed 2 of the same
  rows = []

  def row(lab, n, seed, em, minutes, steps, how):
    method, k, mode, upd = METHOD[lab]
    rows.append({'label': lab, 'method': method, 'K': k, 'grad_mode': mode, 'rmt_update': upd,
                 'n_pairs': n, 'seed': seed, 'best_em': round(em, 3), 'best_step': '',
                 'steps': int(float(steps)), 'wall_time_s': minutes * 60,
                 'k_extrapolation': '', 'source': f'run dir lost; {how}'})

  for (lab, n), c in seed0.items():
    row(lab, n, 0, float(c['em_mean']), float(c['minutes_mean']), c['steps_mean'],
        'claims.csv at a481c38 (the cell was this run)')
  for (lab, n), c in three.items():
    if int(c['seeds']) != 3:
      continue
    s0, c2 = seed0[(lab, n)], two[(lab, n)]
    em1 = 2 * float(c2['em_mean']) - float(s0['em_mean'])
    em2 = 3 * float(c['em_mean']) - 2 * float(c2['em_mean'])
    m1 = 2 * float(c2['minutes_mean']) - float(s0['minutes_mean'])
    m2 = 3 * float(c['minutes_mean']) - 2 * float(c2['minutes_mean'])
    row(lab, n, 1, em1, m1, c['steps_mean'], '2 x mean(21bce43) - seed 0')
    row(lab, n, 2, em2, m2, c['steps_mean'], '3 x mean(f9ff6dc) - 2 x mean(21bce43)')
  claims.write_ledger_rows(
      sorted(rows, key=lambda r: (claims.label_order(r['label']), r['n_pairs'], r['seed'])),
      os.path.join(HERE, 'lost_runs.csv'))
  # The check: the ledger gives back the last committed means and spreads.
  cs = claims.cells(claims.read_ledger(os.path.join(HERE, 'lost_runs.csv')))
  for (lab, n), c in three.items():
    got = cs[(lab, n)]
    assert got['seeds'] == int(c['seeds']), (lab, n)
    assert abs(got['em_mean'] - float(c['em_mean'])) < 1e-9, (lab, n)
    assert abs((got['em_std'] or 0) - float(c['em_std'] or 0)) < 1e-9, (lab, n)
    assert abs(got['minutes'] - float(c['minutes_mean'])) < 1e-9, (lab, n)
  print(f'{len(rows)} rows; means, spreads and minutes match f9ff6dc\'s claims.csv')

  # GradMem K=1 seed 1 at RMT's 12,000 steps (claims.py:equal_budget), reported over the three
  # 4,000-step seeds with seed 1 replaced (b13e708's claims_equal_budget/claims.csv):
  # seed 1's run = 3 x mean(overlay) - (3 x mean(f9ff6dc) - old seed 1).
  eb = cells_at('b13e708', 'benchmarks/results/claims_equal_budget/claims.csv')
  old1 = {(r['label'], r['n_pairs']): r for r in rows if r['seed'] == 1}
  eb_rows = []
  for n in (2, 4):
    c, c3, o = eb[('GradMem K=1', n)], three[('GradMem K=1', n)], old1[('GradMem K=1', n)]
    assert int(c['seeds']) == 3, c  # seed 1 replaced among the same three seeds
    rest_em = 3 * float(c3['em_mean']) - o['best_em']
    rest_min = 3 * float(c3['minutes_mean']) - o['wall_time_s'] / 60
    rest_steps = 3 * float(c3['steps_mean']) - o['steps']
    eb_rows.append(dict(o, best_em=round(3 * float(c['em_mean']) - rest_em, 3),
                        wall_time_s=(3 * float(c['minutes_mean']) - rest_min) * 60,
                        steps=round(3 * float(c['steps_mean']) - rest_steps),
                        source='run dir lost; 3 x mean(b13e708 equal_budget) - seeds 0, 2'))
  path = os.path.join(HERE, '..', 'claims_equal_budget', 'lost_runs.csv')
  claims.write_ledger_rows(eb_rows, path)
  # The check: with seeds 0 and 2 from the ledger above, b13e708's cells come back.
  others = [r for r in claims.read_ledger(os.path.join(HERE, 'lost_runs.csv'))
            if not (claims.label(r) == 'GradMem K=1' and r['seed'] == 1 and r['n_pairs'] < 8)]
  ecs = claims.cells(others + claims.read_ledger(path))
  for n in (2, 4):
    got, want = ecs[('GradMem K=1', n)], eb[('GradMem K=1', n)]
    for field, key in (('em_mean', 'em_mean'), ('em_std', 'em_std'), ('steps', 'steps_mean'),
                       ('minutes', 'minutes_mean')):
      assert abs(got[field] - float(want[key])) < 1e-9, (n, field)
  print(f'{os.path.normpath(path)}: ' + ', '.join(
      f"N={r['n_pairs']} {100 * r['best_em']:.1f}% ({r['steps']} steps, "
      f"{r['wall_time_s'] / 60:.1f} min)" for r in eb_rows))


if __name__ == '__main__':
  main()
