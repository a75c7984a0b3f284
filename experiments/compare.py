r"""Train GradMem, RMT (forward-only writer, same memory size) and the full-context transformer on
the same task and data, and print one comparison table (also written as compare.md / compare.csv).

  python -m experiments.compare --config=configs/kv_retrieval.py --workdir=/tmp/compare
  python -m experiments.compare --config=configs/kv_retrieval.py:paper_n16 --workdir=/tmp/cmp16 \
      --methods=gradmem:K=2,gradmem:K=5,rmt:K=1,rmt:K=2,full_context

Each method is one resumable run under <workdir>/<method...>; rerunning skips finished ones.
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import report, sweeps
from gradmem_jax.training import evaluate as evaluate_lib

_CONFIG = flags.DEFINE_string('config', 'configs/kv_retrieval.py', 'Config file[:args].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Root directory of the comparison.', required=True)
_METHODS = flags.DEFINE_list('methods', ['gradmem', 'rmt:K=1', 'full_context'],
                             'method[:key=value;...] entries, one run each.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands only.')

COLUMNS = ('method', 'K', 'memory_floats', 'em', 'token_acc', 'steps', 'wall_time_min',
           'write_flops_per_sample', 'read_flops_per_sample')


def parse_methods(entries):
  points = []
  for e in entries:
    name, _, rest = e.partition(':')
    p = {'method': name}
    for kv in [x for x in rest.split(';') if x]:
      k, _, v = kv.partition('=')
      p[k] = v
    points.append(p)
  return points


def table_rows(runs):
  rows = []
  for r in runs:
    rows.append({'method': r['method'], 'K': r['K'] if r['method'] != 'full_context' else '-',
                 'memory_floats': r['memory_floats'], 'em': r['best'].get('em'),
                 'token_acc': r['best'].get('token_acc'), 'steps': r['steps'],
                 'wall_time_min': r['wall_time_s'] / 60,
                 'write_flops_per_sample': (r.get('write_flops_per_sample')
                                            if r['method'] != 'full_context' else '-'),
                 'read_flops_per_sample': r.get('read_flops_per_sample')})
  order = {'full_context': 0, 'gradmem': 1, 'rmt': 2}
  return sorted(rows, key=lambda x: (order.get(x['method'], 9), str(x['K'])))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  sweep = sweeps.Sweep(name='compare', points=parse_methods(_METHODS.value))
  sweeps.validate_points(_CONFIG.value, sweep, sweeps.load_config_module(_CONFIG.value).get_config)
  sweeps.run_sweep(_CONFIG.value, sweep, _WORKDIR.value, dry_run=_DRY_RUN.value,
                   log=lambda s: print(s, flush=True))
  if _DRY_RUN.value:
    return
  runs = sweeps.collect(_WORKDIR.value)
  rows = table_rows(runs)
  table = evaluate_lib.markdown_table(rows, COLUMNS)
  n = runs[0]['n_pairs'] if runs else '?'
  print(f'\nKV retrieval, {n} pairs (best validation checkpoint of each run):')
  print(table)
  with open(os.path.join(_WORKDIR.value, 'compare.md'), 'w') as f:
    f.write(f'KV retrieval, {n} pairs\n\n{table}\n')
  evaluate_lib.write_csv(rows, COLUMNS, os.path.join(_WORKDIR.value, 'compare.csv'))
  out = report.make_report(runs, _WORKDIR.value, figures=('em_by_method', 'em_vs_n'),
                           title=f'KV retrieval, {n} pairs')
  print('wrote ' + ', '.join([os.path.join(_WORKDIR.value, 'compare.md'),
                              os.path.join(_WORKDIR.value, 'compare.csv')] + out['files']))


if __name__ == '__main__':
  app.run(main)
