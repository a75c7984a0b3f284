r"""Run a sweep: one resumable training run per point, finished points skipped.

  python -m experiments.sweep --config=configs/kv_retrieval.py --sweep=configs/sweeps/k_steps.py:cpu \
      --sweep_dir=/tmp/sweep_k
  python -m experiments.sweep ... --dry_run      # one launch command per point (cluster / TPU queue)

Afterwards: python -m experiments.report --sweep_dir=/tmp/sweep_k
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import sweeps

_CONFIG = flags.DEFINE_string('config', 'configs/kv_retrieval.py',
                              'Config file[:presets,overrides] every point starts from.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file[:variant].', required=True)
_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Root directory of the sweep.', required=True)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print one command per point instead of running.')
_REPORT = flags.DEFINE_bool('report', True, 'Write the report after running.')
_EVAL_K = flags.DEFINE_list('K_eval', [], 'Also evaluate every finished GradMem point with these '
                            'K_eval values (k_extrapolation.json per point).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  sweep = sweeps.load_sweep(_SWEEP.value)
  config_module = sweeps.load_config_module(_CONFIG.value)
  sweeps.validate_points(_CONFIG.value, sweep, config_module.get_config)
  print(f'sweep {sweep.name}: {len(sweep.points)} points -> {_SWEEP_DIR.value}', flush=True)
  status = sweeps.run_sweep(_CONFIG.value, sweep, _SWEEP_DIR.value, dry_run=_DRY_RUN.value,
                            log=lambda s: print(s, flush=True))
  if _DRY_RUN.value:
    return
  failed = [s for s in status if s['status'].startswith('failed')]
  if _EVAL_K.value:
    from gradmem_jax.training import evaluate
    import json
    ks = [int(k) for k in _EVAL_K.value]
    for p in sweep.points:
      wd = os.path.join(_SWEEP_DIR.value, sweeps.slug(p))
      out = os.path.join(wd, 'k_extrapolation.json')
      if sweeps.is_finished(wd) and not os.path.exists(out):
        rows = evaluate.evaluate_run(wd, ks, aliases=config_module.ALIASES)
        if rows[0]['method'] == 'gradmem':
          with open(out, 'w') as f:
            json.dump(rows, f, indent=2)
  if _REPORT.value:
    from gradmem_jax import report
    out = report.make_report(sweeps.collect(_SWEEP_DIR.value), _SWEEP_DIR.value,
                             figures=sweep.figures, title=sweep.name)
    print(out['table'])
    print('wrote ' + ', '.join(out['files']))
  if failed:
    raise SystemExit(f'{len(failed)} point(s) failed: {[s["slug"] for s in failed]}')


if __name__ == '__main__':
  app.run(main)
