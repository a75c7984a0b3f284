r"""Run a sweep: one resumable training run per point, finished points skipped.

  python -m experiments.sweep --config=configs/kv_retrieval.py --sweep=configs/sweeps/k_steps.py:cpu \
      --sweep_dir=/tmp/sweep_k
  python -m experiments.sweep ... --dry_run      # one launch command per point (cluster / TPU queue)

Afterwards: python -m experiments.report --sweep_dir=/tmp/sweep_k
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import cli_utils, report, sweeps

_CONFIG = flags.DEFINE_string('config', 'configs/kv_retrieval.py',
                              'Config file[:presets,overrides] every point starts from.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file[:variant].', required=True)
_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Root directory of the sweep.', required=True)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print one command per point instead of running.')
_REPORT = flags.DEFINE_bool('report', True, 'Write the report after running.')
_FROM_ARCHIVE = flags.DEFINE_string(
    'from_archive', None, 'An archive of this sweep (experiments.archive): its finished points '
    'that the sweep dir lacks are copied in first, so they are skipped and the next curriculum '
    'step starts from their archived best parameters; its unfinished points (snapshots) resume '
    'from their archived checkpoints.')
_ONLY = flags.DEFINE_string(
    'only', None, 'Run (and evaluate) only the points whose name matches this regular expression, '
    'e.g. "K=2,grad_mode=first" or "^n_pairs=[24],.*seed=1$"; the others stay in the sweep dir\'s '
    'manifest and report. A point whose curriculum source is left out waits for that source.')
_XLA_CACHE = flags.DEFINE_string(
    'xla_cache_dir', None, "JAX's persistent compilation cache for the points' processes and "
    "this one's K_eval evaluations: points that compile the same program (the seeds of one cell, "
    'a resumed point) load it instead of compiling it again. Default: $JAX_COMPILATION_CACHE_DIR '
    "when set, else <sweep_dir>/xla_cache; '' turns it off.")
_EVAL_K = flags.DEFINE_list('K_eval', [], 'Also evaluate every finished point whose method '
                            'supports it with these K_eval values (k_extrapolation.json): a '
                            'point as soon as it finishes (in a process of its own), then, at '
                            'the end, the finished points that still have none.')
_WORKERS = flags.DEFINE_integer(
    'workers', 1, 'Points run at once, each in its own process, in the sweep\'s order (a '
    'curriculum point waits for its source while free workers take the next points). The CPUs '
    'are split between them; workers sharing a GPU get XLA_PYTHON_CLIENT_MEM_FRACTION = 0.9 / '
    '(workers on it) unless set; a TPU takes one worker. Default: --worker_gpus\' length, else 1.')
_WORKER_GPUS = flags.DEFINE_list(
    'worker_gpus', [], 'One entry per worker: indices of the GPUs this process sees, "+" joining '
    'several: --worker_gpus=0,1,2,3 (a GPU each) or 0+1,2+3 (two each).')


def main(argv):
  cli_utils.quiet_logs_unless_asked()  # as the training runs: orbax's INFO logs hidden
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not all(k.isdigit() for k in _EVAL_K.value):
    raise app.UsageError(f'--K_eval={",".join(_EVAL_K.value)}: allowed are whole numbers >= 0 '
                         '(WRITE steps at evaluation), e.g. --K_eval=1,2,5,8')
  eval_ks = [int(k) for k in _EVAL_K.value]
  workers = _WORKERS.value
  if _WORKER_GPUS.value and not flags.FLAGS['workers'].present:
    workers = len(_WORKER_GPUS.value)
  try:
    sweeps.worker_slots(workers, _WORKER_GPUS.value)
  except ValueError as e:
    raise app.UsageError(f'--{e}')
  cache = _XLA_CACHE.value
  if cache is None:  # the environment's setting ('' included: off), else the sweep dir's cache
    cache = os.environ.get(sweeps.XLA_CACHE_ENV, os.path.join(_SWEEP_DIR.value, 'xla_cache'))
  # This process's own compiles (the K_eval evaluations) use it too. Set before anything
  # compiles: jax fixes its cache directory at the first compile.
  import jax
  jax.config.update('jax_compilation_cache_dir', sweeps.cache_path(cache) or None)
  sweep = sweeps.load_sweep(_SWEEP.value)
  if _ONLY.value:
    try:
      sweep = sweeps.select(sweep, _ONLY.value)
    except ValueError as e:
      raise app.UsageError(str(e))
  sweeps.validate_points(_CONFIG.value, sweep)
  print(f'sweep {sweep.name}: {len(sweep.points)} points -> {_SWEEP_DIR.value}', flush=True)
  log = lambda s: print(s, flush=True)
  if _FROM_ARCHIVE.value and _DRY_RUN.value:
    print(f'--dry_run: nothing restored from {_FROM_ARCHIVE.value}', flush=True)
  elif _FROM_ARCHIVE.value:
    names = sweeps.restore(_FROM_ARCHIVE.value, _SWEEP_DIR.value, sweep, _CONFIG.value, log=log)
    print(f'restored {len(names)} finished points from {_FROM_ARCHIVE.value}', flush=True)
    resumed = sweeps.restore_unfinished(_FROM_ARCHIVE.value, _SWEEP_DIR.value, sweep, log=log)
    if resumed:
      print(f'restored {len(resumed)} unfinished points from {_FROM_ARCHIVE.value}: they resume '
            'from their archived steps', flush=True)
  status = sweeps.run_sweep(_CONFIG.value, sweep, _SWEEP_DIR.value, dry_run=_DRY_RUN.value, log=log,
                            xla_cache_dir=cache, eval_ks=eval_ks, workers=workers,
                            worker_gpus=_WORKER_GPUS.value)
  if _DRY_RUN.value:
    return
  eval_failed = sweeps.evaluate_points(sweep, _SWEEP_DIR.value, eval_ks, log=log) if eval_ks else []
  if _REPORT.value:
    out = report.make_report(sweeps.collect(_SWEEP_DIR.value), _SWEEP_DIR.value,
                             figures=sweep.figures, title=sweep.name)
    print(out['table'])
    print('wrote ' + ', '.join(out['files']))
  busy = [s for s in status if s['status'].startswith('busy')]
  if busy:
    print(f'{len(busy)} point(s) left to the processes training them: '
          f'{[s["slug"] for s in busy]}', flush=True)
  failed = [s for s in status if s['status'].startswith('failed')]
  problems = []
  if failed:
    problems.append(f'{len(failed)} point(s) failed: {[s["slug"] for s in failed]}')
  if eval_failed:
    problems.append(f'{len(eval_failed)} K_eval evaluation(s) failed: {eval_failed}')
  if problems:
    raise SystemExit('; '.join(problems))


if __name__ == '__main__':
  app.run(main)
