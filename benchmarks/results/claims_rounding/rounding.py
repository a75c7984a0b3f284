r"""Why a rerun of a claims point does not repeat the run it reruns: the CPUs it gets.

Same code, config and seed, two questions (the commands are in this directory's README.md):

1. The first 200 steps of GradMem K=2 at N = 2, seed 1: the archived run (made on an earlier
   session's machine) against the same point run here on two CPUs, on one CPU (pinned, as a
   sweep's --workers=2 pins each point on 2 cores), and on two CPUs with XLA told to compile for
   AVX2 only (XLA_FLAGS=--xla_cpu_max_isa=AVX2). Each logged row (steps 50, 100, 150, 200) is
   compared field by field with the archived run's and with the two-CPU run's.
2. Whole runs of GradMem K=1 at N = 2, seeds 0-2 (4,000 steps): the runs lost with their
   machine (lost_runs.csv), the third session's reruns on this machine (runs/claims_rounding_rerun; its
   sweep ran --workers=2, so one CPU each), and here: one CPU (it must give back the reruns'
   params checksums if a run repeats on the same machine with the same CPUs), two CPUs, and two
   CPUs compiled for AVX2 only. Best validation EM per seed, and a figure of validation EM
   against step.
3. Claim 1 at N = 2 (GradMem K=1 against RMT x1, 4,000 and 12,000 steps) with each set of
   runs: RMT x1's seed 0 ran on one CPU in the third session's rerun (44.4%) and on two
   here (the lost run's 22.4%); its seeds 1-2 are two-CPU reruns (the claims archive).
4. GradMem K=1's curriculum chains N = 2 -> 4 -> 8 of seeds 1-2 on one CPU (the third session's
   --workers=2 sweep) and on two (here, the claims sweep's points run with --only from the
   two-CPU N = 2 runs), and claim 1 at N = 4 and 8 with each (seed 0's N = 4 and 8 are the lost
   runs, two CPUs; RMT x1's seeds 1-2 two-CPU reruns).

  python benchmarks/results/claims_rounding/rounding.py   # from the repository root

writes rounding.md, rounding.json and rounding.png beside this file.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)
from gradmem_jax import claims, environment  # noqa: E402
from gradmem_jax.report import _pyplot  # noqa: E402

RUNS = os.path.join(ROOT, 'benchmarks', 'results', 'runs')
K2 = 'n_pairs=2,method=gradmem,K=2,inner_lr=0.3,lr=0.001,seed=1'
# The claims sweep's point names: GradMem K=1 and RMT x1 at N (first field), seed (second).
CHAIN = 'n_pairs={},method=gradmem,K=1,inner_lr=0.3,lr=0.001,seed={}'
RMT1N = ('n_pairs={},method=rmt,K=1,memory.rmt_update=replace,memory.mem_proj=proj,lr=0.001,'
         'max_steps=12000,seed={}')
FIRST = {  # the first 200 steps: name -> run dir
    'archived run (earlier machine)': os.path.join(RUNS, 'claims_cpu', K2),
    'here, 2 CPUs': os.path.join(RUNS, 'claims_rounding_first200', 'native'),
    'here, 1 CPU': os.path.join(RUNS, 'claims_rounding_first200', 'one_cpu'),
    'here, 2 CPUs, AVX2 only': os.path.join(RUNS, 'claims_rounding_first200', 'avx2'),
}
LOST = 'lost run (earlier machine)'
RERUN = 'rerun, third session (this machine, 1 CPU)'
WHOLE = {  # whole runs: name -> archive dir holding the K1 points
    RERUN: os.path.join(RUNS, 'claims_rounding_rerun'),
    'here, 1 CPU': os.path.join(RUNS, 'claims_rounding_one_cpu'),
    'here, 2 CPUs': os.path.join(RUNS, 'claims_rounding_native'),
    'here, 2 CPUs, AVX2 only': os.path.join(RUNS, 'claims_rounding_avx2'),
}
FIELDS = ('loss', 'grad_norm', 'param_norm', 'train/target_loss')


def rows(run_dir):
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def train_rows(run_dir, last=200):
  return {r['step']: r for r in rows(run_dir) if 'loss' in r and r['step'] <= last}


def compare(ref, got):
  """Per logged step: how many FIELDS are bit for bit equal, and the relative differences."""
  out = []
  for step in sorted(ref):
    diff = {k: (ref[step][k], got[step][k]) for k in FIELDS if ref[step][k] != got[step][k]}
    out.append({'step': step, 'fields_equal': len(FIELDS) - len(diff),
                'rel_diff': {k: abs(a - b) / abs(a) for k, (a, b) in diff.items()}})
  return out


def first_steps():
  """Each run here against the archived run and against the two-CPU run here."""
  runs = {name: train_rows(d) for name, d in FIRST.items()}
  archived, two = list(FIRST)[:2]
  out = []
  for name in list(FIRST)[1:]:
    for ref in (archived, two):
      if name != ref:
        out += [{'run': name, 'against': ref, **c} for c in compare(runs[ref], runs[name])]
  return out


LOST_RUNS: dict = {}  # (label, N, seed) -> best EM of lost_runs.csv, read on first use


def lost_em(label, n, seed):
  """The best EM that lost_runs.csv (read as the claims report reads it) keeps for a run, or
  None."""
  if not LOST_RUNS:
    path = os.path.join(ROOT, 'benchmarks', 'results', 'claims_cpu', 'lost_runs.csv')
    LOST_RUNS.update({(claims.label(r), r['n_pairs'], r['seed']): r['best']['em']
                      for r in claims.read_ledger(path)})
  return LOST_RUNS.get((label, n, seed))


def whole_runs():
  table = []
  for seed in (0, 1, 2):
    row = {'seed': seed, LOST: lost_em('GradMem K=1', 2, seed)}
    for name, archive in WHOLE.items():
      d = os.path.join(archive, CHAIN.format(2, seed))
      if not os.path.exists(os.path.join(d, 'results.json')):
        row[name] = None
        continue
      with open(os.path.join(d, 'results.json')) as f:
        res = json.load(f)
      curve = claims.em_curve(os.path.join(d, 'metrics.jsonl'))
      sessions = environment.read(d)
      row[name] = {'best_em': res['best']['em'], 'best_step': res['best_step'],
                   'params_checksum': res['params_checksum'], 'curve': curve,
                   'machine': environment.machine(sessions[-1]) if sessions else None}
    table.append(row)
  return table


def best_em(run_dir):
  with open(os.path.join(run_dir, 'results.json')) as f:
    return float(json.load(f)['best']['em'])


def cell(ems):
  """The claims report's cell (mean, population std) of per-seed best EMs."""
  return {'em_mean': sum(ems) / len(ems),
          'em_std': (sum((e - sum(ems) / len(ems)) ** 2 for e in ems) / len(ems)) ** 0.5,
          'by_seed': list(ems)}


def claim1_sets(table):
  """Claim 1 at N = 2 and 4,000 steps under each set of runs: (name, GradMem K=1 cell,
  RMT x1 cell, verdict by the claims report's rule)."""
  rmt_12 = [best_em(os.path.join(RUNS, 'claims_cpu', RMT1N.format(2, s))) for s in (1, 2)]
  rmt_two = [best_em(os.path.join(RUNS, 'claims_rounding_native', RMT1N.format(2, 0))), *rmt_12]
  rmt_one = [best_em(os.path.join(RUNS, 'claims_rounding_rerun', RMT1N.format(2, 0))), *rmt_12]
  g = lambda name: [row[name]['best_em'] for row in table]
  sets = [
      ('all on two CPUs: the claims report (since the fifth session), the claims sweep\'s '
       'default and the lost runs\' arithmetic', g('here, 2 CPUs'), rmt_two),
      ('GradMem and RMT x1 seed 0 on one CPU (the report before the fifth session)',
       g(RERUN), rmt_one),
      ('GradMem compiled for AVX2 only, RMT x1 on two CPUs', g('here, 2 CPUs, AVX2 only'),
       rmt_two),
  ]
  return [(name, cell(a), cell(b), claims.compare(cell(a), cell(b))) for name, a, b in sets]


def em_or_none(run_dir):
  return best_em(run_dir) if os.path.exists(os.path.join(run_dir, 'results.json')) else None


def chains():
  """GradMem K=1, N = 4 and 8: per seed, one CPU and two; and claim 1 with each."""
  rows, verdicts = [], []
  for n in (4, 8):
    one = {s: em_or_none(os.path.join(RUNS, 'claims_rounding_rerun', CHAIN.format(n, s)))
           for s in (1, 2)}
    two = {s: em_or_none(os.path.join(RUNS, 'claims_rounding_native', CHAIN.format(n, s)))
           for s in (1, 2)}
    lost = lost_em('GradMem K=1', n, 0)
    rows.append({'n_pairs': n, 'seed0_lost': lost, 'one_cpu': one, 'two_cpus': two})
    rmt = [lost_em('RMT x1', n, 0)] + [
        best_em(os.path.join(RUNS, 'claims_cpu', RMT1N.format(n, s))) for s in (1, 2)]
    for name, g in (('two CPUs (the claims report)', two), ('one CPU (the third session)', one)):
      if None in g.values() or lost is None:
        continue
      a, b = cell([lost, g[1], g[2]]), cell(rmt)
      verdicts.append((n, name, a, b, claims.compare(a, b)))
  return rows, verdicts


def main():
  steps = first_steps()
  table = whole_runs()
  verdicts = claim1_sets(table)
  chain_rows, chain_verdicts = chains()
  names = [LOST, *WHOLE]
  em = lambda v: '' if v is None else f'{100 * (v if isinstance(v, float) else v["best_em"]):.1f}'
  md = ['# Why reruns part: the CPUs a run gets, not the code', '',
        'Same code, config and seed. Made by `rounding.py` (the commands: README.md).', '',
        '## The first 200 steps (GradMem K=2, N = 2, seed 1)', '',
        'Each logged training row against the same row of another run; "equal" counts the '
        'fields of ' + ', '.join(f'`{f}`' for f in FIELDS) + ' that are bit for bit the same.', '',
        '| run | against | step | equal | largest relative difference |',
        '|---|---|---|---|---|']
  for s in steps:
    big = max(s['rel_diff'].items(), key=lambda kv: kv[1], default=None)
    md.append(f"| {s['run']} | {s['against']} | {s['step']} | {s['fields_equal']}/{len(FIELDS)} | "
              + (f'{big[1]:.1e} ({big[0]})' if big else '0') + ' |')
  md += ['',
         '## Whole runs (GradMem K=1, N = 2, 4,000 steps): best validation EM (%)', '',
         '| seed | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for row in table:
    md.append(f"| {row['seed']} | " + ' | '.join(em(row[n]) for n in names) + ' |')
  again = 'here, 1 CPU'
  both = [r['seed'] for r in table if r[RERUN] and r[again]]
  same = [r['seed'] for r in table if r['seed'] in both
          and r[RERUN]['params_checksum'] == r[again]['params_checksum']]
  lost_same = [r['seed'] for r in table if r['here, 2 CPUs'] and r[LOST] is not None
               and round(r['here, 2 CPUs']['best_em'], 3) == round(r[LOST], 3)]
  md += ['', f'- The one-CPU runs here end with the same parameters as the third session\'s '
         f'reruns (params checksum) in seeds {same} of {both}.',
         f'- The two-CPU runs here give the lost runs\' best EM (to the 0.1% the ledger keeps) in '
         f'seeds {lost_same} of {[r["seed"] for r in table if r[LOST] is not None]}.', '',
         '![EM against step](rounding.png)', '',
         '## Claim 1 at N = 2 and 4,000 steps (GradMem K=1 against RMT x1) with each set of runs',
         '', 'Per seed (0 / 1 / 2) and mean ± spread (population std) of best EM (%). The rule '
         'is the claims report\'s: supported when the gap exceeds both spreads summed.', '',
         '| runs | GradMem K=1 | RMT x1 | gap | spreads summed | verdict |', '|---|---|---|---|---|---|']
  pct = lambda c: (' / '.join(f'{100 * e:.1f}' for e in c['by_seed'])
                   + f' ({100 * c["em_mean"]:.1f} ± {100 * c["em_std"]:.1f})')
  verdict_row = lambda a, b, v: (f'{pct(a)} | {pct(b)} | {100 * (a["em_mean"] - b["em_mean"]):.1f}'
                                 f' | {100 * (a["em_std"] + b["em_std"]):.1f} | {v} |')
  for name, a, b, verdict in verdicts:
    md.append(f'| {name} | {verdict_row(a, b, verdict)}')
  md += ['', 'RMT x1 seed 0 on two CPUs gives the lost run\'s '
         f'{100 * verdicts[0][2]["by_seed"][0]:.1f}% (one CPU: '
         f'{100 * verdicts[1][2]["by_seed"][0]:.1f}%).', '',
         '## GradMem K=1\'s chains N = 2 -> 4 -> 8 on one CPU and on two (seeds 1-2)', '',
         'Best EM (%). Seed 0\'s N = 4 and 8 runs are the lost runs (two CPUs). Blank: not run.',
         '', '| N | seed 0 (lost run) | seed 1, one CPU | seed 1, two CPUs | seed 2, one CPU | '
         'seed 2, two CPUs |', '|---|---|---|---|---|---|']
  pc = lambda v: '' if v is None else f'{100 * v:.1f}'
  n2 = {row['seed']: row for row in table}
  md.append(f'| 2 | {pc(n2[0][LOST])} | {em(n2[1][RERUN])} | {em(n2[1]["here, 2 CPUs"])} | '
            f'{em(n2[2][RERUN])} | {em(n2[2]["here, 2 CPUs"])} |')
  for row in chain_rows:
    md.append(f'| {row["n_pairs"]} | {pc(row["seed0_lost"])} | {pc(row["one_cpu"][1])} | '
              f'{pc(row["two_cpus"][1])} | {pc(row["one_cpu"][2])} | {pc(row["two_cpus"][2])} |')
  if chain_verdicts:
    md += ['', 'Claim 1 at N = 4 and 8 (GradMem K=1 seeds 0-2 against RMT x1 seeds 0-2):', '',
           '| N | GradMem K=1 seeds 1-2 on | GradMem K=1 | RMT x1 | gap | spreads summed | '
           'verdict |', '|---|---|---|---|---|---|---|']
    for n, name, a, b, v in chain_verdicts:
      md.append(f'| {n} | {name} | {verdict_row(a, b, v)}')
  md.append('')
  with open(os.path.join(HERE, 'rounding.md'), 'w') as f:
    f.write('\n'.join(md))
  with open(os.path.join(HERE, 'rounding.json'), 'w') as f:
    json.dump({'first_steps': steps, 'whole_runs': table,
               'claim1_n2': [{'runs': n, 'gradmem_k1': a, 'rmt_x1': b, 'verdict': v}
                             for n, a, b, v in verdicts],
               'chains': chain_rows,
               'claim1_n4_n8': [{'n_pairs': n, 'runs': name, 'gradmem_k1': a, 'rmt_x1': b,
                                 'verdict': v} for n, name, a, b, v in chain_verdicts]},
              f, indent=1)
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
  for ax, row in zip(axes, table):
    for (name, style) in zip(WHOLE, ('-', ':', '--', '-.')):
      if row[name]:
        s, e = zip(*row[name]['curve'])
        ax.plot(s, [100 * v for v in e], style, marker='o', ms=3, label=name)
    if row[LOST] is not None:
      ax.axhline(100 * row[LOST], color='grey', lw=0.8,
                 label='lost run\'s best (earlier machine)')
    ax.set_title(f'GradMem K=1, N = 2, seed {row["seed"]}')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('validation EM (%)')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, 'rounding.png'), dpi=110)
  print('\n'.join(md))


if __name__ == '__main__':
  main()
