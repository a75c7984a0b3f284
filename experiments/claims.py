r"""The paper's three KV claims from a claims sweep: one Markdown + CSV table, the claims with their
numbers, and figures: EM vs N, EM vs K_eval, second vs first order, learning curves; which runs
were still rising when their steps ran out (gradmem_jax/claims.py says how a claim is judged and
when a run counts as cut short).

  python -m experiments.sweep --sweep=configs/sweeps/claims.py:cpu --sweep_dir=runs/claims_cpu \
      --K_eval=1,2,5,8
  python -m experiments.claims --sweep_dir=runs/claims_cpu [--out=benchmarks/results/claims_cpu] \
      [--expect=configs/sweeps/claims.py:cpu]   # + the points still without a run
  python -m experiments.claims --sweep_dir=runs/claims_tune --tuning   # the grid and TUNED
  python -m experiments.claims --sweep_dir=runs/claims_cpu,runs/claims_equal_budget \
      --out=benchmarks/results/claims_equal_budget   # overlay: the later dir's runs replace
  python -m experiments.claims \
      --sweep_dir=benchmarks/results/claims_cpu/runs.csv,runs/claims_cpu \
      --out=benchmarks/results/claims_cpu   # a committed ledger plus the runs since
  python -m experiments.claims --sweep_dir=runs/claims_cpu,runs/claims_baselines
      # + the full-context transformer and Mamba (claims.py:baselines) as rows and lines

Each report also writes runs.csv, one row per run behind it. A --sweep_dir entry may be such a
ledger instead of a directory: run directories do not always outlive a machine, a ledger does.

Unfinished points are left out (each cell says how many seeds it has), so it can be rerun while a
sweep is still going.
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import claims

_SWEEP_DIR = flags.DEFINE_list(
    'sweep_dir', None, 'Claims sweep directory (or archive, or runs.csv ledger), or several, '
    'comma-separated: a run of a later one replaces the earlier ones\' runs of the same method, N '
    'and seed.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: the sweep directory).')
_TITLE = flags.DEFINE_string('title', 'KV claims', 'Report title.')
_EXPECT = flags.DEFINE_string(
    'expect', None, 'A claims sweep (file:variant, e.g. configs/sweeps/claims.py:cpu): the report '
    'adds a "Still to run" section, the cells and seeds of its points that have no run here.')
_TUNING = flags.DEFINE_bool('tuning', False, 'The sweep is the fairness grid (claims.py:tune): '
                            'write tuning.md (the grid, best first) and print the TUNED settings.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  dirs = [d for d in _SWEEP_DIR.value if d]
  if _TUNING.value and len(dirs) != 1:
    raise app.UsageError(f'--tuning takes one --sweep_dir, got {len(dirs)}: {dirs}')
  if len(dirs) > 1 and not _OUT.value:
    raise app.UsageError('--out is required with several --sweep_dir (the report mixes their '
                         'runs, so it belongs to none of them)')
  if any(os.path.isfile(d) for d in dirs):
    if _TUNING.value:
      raise app.UsageError('--tuning takes a sweep directory: a runs.csv ledger has no grid '
                           'settings')
    if not _OUT.value:
      raise app.UsageError('--out is required with a runs.csv ledger in --sweep_dir (the report '
                           'writes a runs.csv of its own)')
  for d in dirs:
    if not (os.path.isdir(d) or (os.path.isfile(d) and d.endswith('.csv'))):
      raise app.UsageError(f'--sweep_dir: {d!r} is neither a directory nor a runs.csv ledger')
  try:
    sources = [claims.load_runs(d) for d in dirs]
  except ValueError as e:
    raise app.UsageError(f'--sweep_dir: {e}')
  # The first source must have finished runs; a later one may not have any yet.
  if not sources[0]:
    raise app.UsageError(f'--sweep_dir: no finished runs in {dirs[0]!r}')
  runs = claims.overlay(sources) if len(sources) > 1 else sources[0]
  if _TUNING.value:
    out_dir = _OUT.value or dirs[0]
    os.makedirs(out_dir, exist_ok=True)
    table, tuned = claims.tuning_report(runs)
    md = f'# {_TITLE.value}: fairness grid\n\n{table}\nTUNED = {tuned!r}\n'
    with open(os.path.join(out_dir, 'tuning.md'), 'w') as f:
      f.write(md)
    print(md)
    return
  expect, progress = None, None
  if _EXPECT.value:
    from gradmem_jax import sweeps  # imports no JAX, as the rest of the report
    try:
      expect = (_EXPECT.value, sweeps.load_sweep(_EXPECT.value).points)
    except (ValueError, OSError, ImportError, AttributeError) as e:
      raise app.UsageError(f'--expect={_EXPECT.value}: {e}')
    progress = claims.progress_of([u for d in dirs if os.path.isdir(d)
                                   for u in sweeps.in_progress(d)])
  try:
    out = claims.make_claims_report(runs, _OUT.value or dirs[0], title=_TITLE.value,
                                    expect=expect, progress=progress)
  except claims.DuplicateRunError as e:
    raise app.UsageError(str(e))
  print(out['markdown'])
  print('wrote ' + ', '.join(out['files']))


if __name__ == '__main__':
  app.run(main)
