r"""Train several methods on the same task and data and print one comparison table (also
compare.md / .csv and a bar chart of EM with the memory each keeps).

  python -m experiments.compare --config=configs/<task>.py[:presets] --workdir=/tmp/compare \
      [--methods=NAME[:key=value;...],...]

Without --methods: the config file's COMPARE list (for KV retrieval: GradMem, RMT x1 with the
same memory size, the full-context transformer), else every registered method. Each entry is
one resumable run under <workdir>/<entry>; rerunning skips finished ones.
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import config_lib, report, sweeps
from gradmem_jax.memory import METHODS

_CONFIG = flags.DEFINE_string('config', None, 'Config file[:args].', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Root directory of the comparison.', required=True)
_METHODS = flags.DEFINE_list('methods', None,
                             'method[:key=value;...] entries (registered method names), one run '
                             "each (default: the config file's COMPARE list).")
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands only.')

COLUMNS = ('memory_floats', 'em', 'token_acc', 'steps', 'wall_time_min',
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


def table_rows(runs, order, fields):
  """One row per run, in the order of --methods: its method fields, then the outcome."""
  rows = []
  for r in runs:
    row = {f: report.identity_value(r, f) for f in fields}
    row.update(memory_floats=r['memory_floats'], em=r['best'].get('em'),
               token_acc=r['best'].get('token_acc'), steps=r['steps'],
               wall_time_min=r['wall_time_s'] / 60,
               write_flops_per_sample=r.get('write_flops_per_sample'),
               read_flops_per_sample=r.get('read_flops_per_sample'))
    rows.append((order.get(r['slug'], len(order)), row))
  return [row for _, row in sorted(rows, key=lambda x: x[0])]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  entries = _METHODS.value
  if entries is None:
    module = config_lib.load_config_module(_CONFIG.value)
    entries = list(getattr(module, 'COMPARE', None) or METHODS.names())
  points = parse_methods(entries)
  sweep = sweeps.Sweep(name='compare', points=points)
  sweeps.validate_points(_CONFIG.value, sweep)
  sweeps.run_sweep(_CONFIG.value, sweep, _WORKDIR.value, dry_run=_DRY_RUN.value,
                   log=lambda s: print(s, flush=True))
  if _DRY_RUN.value:
    return
  runs = sweeps.collect(_WORKDIR.value)
  if not runs:
    raise SystemExit(f'no finished runs under {_WORKDIR.value}')
  fields = []  # the method fields of every run, in first-seen order (method, K, ...)
  for r in runs:
    fields += [f for f in r.get('method_fields', ()) if f not in fields]
  rows = table_rows(runs, {sweeps.slug(p): i for i, p in enumerate(points)}, fields)
  cols = fields + list(COLUMNS)
  table = report.markdown_table(rows, cols)
  task_fields = [f for f in runs[0].get('identity_fields', ()) if f not in fields]
  title = report.describe(runs[0], task_fields)
  print(f'\n{runs[0]["task_summary"]} (best validation checkpoint of each run):')
  print(table)
  md = os.path.join(_WORKDIR.value, 'compare.md')
  with open(md, 'w') as f:
    f.write(f'{title}\n\n{table}\n')
  csv_path = os.path.join(_WORKDIR.value, 'compare.csv')
  report.write_csv(rows, cols, csv_path)
  out = report.make_report(runs, _WORKDIR.value, figures=('em_by_method',), title=title)
  print('wrote ' + ', '.join([md, csv_path] + out['files']))


if __name__ == '__main__':
  app.run(main)
