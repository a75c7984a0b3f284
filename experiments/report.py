r"""Collect a sweep's results into one table (Markdown + CSV, mean/std over seeds) and figures.

  python -m experiments.report --sweep_dir=/tmp/sweep_k [--figures=em_vs_n,k_extrapolation]
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from gradmem_jax import report, sweeps

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Sweep root directory.', required=True)
_FIGURES = flags.DEFINE_list('figures', [], 'Figure kinds (default: those the sweep names).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: the sweep directory).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  runs = sweeps.collect_finished(_SWEEP_DIR.value)
  manifest = os.path.join(_SWEEP_DIR.value, 'sweep.json')
  name, figs = os.path.basename(os.path.normpath(_SWEEP_DIR.value)), []
  if os.path.exists(manifest):
    m = json.load(open(manifest))
    name, figs = m.get('name', name), m.get('figures', [])
  out = report.make_report(runs, _OUT.value or _SWEEP_DIR.value,
                           figures=_FIGURES.value or figs, title=name)
  print(out['table'])
  print('wrote ' + ', '.join(out['files']))


if __name__ == '__main__':
  app.run(main)
