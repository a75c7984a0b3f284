r"""What JAX's persistent compilation cache saves a run's start: the runner in fresh processes,
without the cache, with an empty one (it fills it) and with the filled one; prints one JSON object
per configuration.

  python benchmarks/compile_cache.py                      # the default CPU job
  python benchmarks/compile_cache.py --configs=configs/kv_retrieval.py \
      --configs=configs/kv_retrieval.py:paper_n16,K=2,data.n_val=64,eval.batch_size=64

Each run is `python -m experiments.train --config=<config>,max_steps=<steps>` in a fresh
workdir, so nearly all of it is start-up: imports, building the task, tracing and compiling (or
loading) the programs, the few steps, the final evaluation. Per variant: wall seconds, the
process's CPU seconds (user + system, less sensitive to other load than wall time) and its peak
RSS, medians over `--repeats` rounds (the variants alternate within a round). The runs' metrics
(losses, EM) must be identical across variants: a program loaded from the cache is the program
that was compiled. Sweeps turn the cache on by default (experiments.sweep --xla_cache_dir), so
the seeds of one cell and a resumed point load what the first compiled.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

from rows import busy_jiffies, emit  # noqa: E402  (beside this script)

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('configs', ['configs/kv_retrieval.py'],
                          'a runner config (file[:presets,overrides]), one row each; repeat the '
                          'flag for several (a config holds commas, so no comma list)')
flags.DEFINE_integer('steps', 2, 'training steps per run (also the evaluation interval)')
flags.DEFINE_integer('repeats', 2, 'rounds of (no cache, empty cache, filled cache)')
flags.DEFINE_string('out', '', 'also append the JSON lines to this file')

CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'


def _with_steps(config: str, steps: int) -> str:
  path, _, arg = config.partition(':')
  extra = f'max_steps={steps},train.eval_every={steps}'
  return f'{path}:{arg},{extra}' if arg else f'{path}:{extra}'


def _busy_s() -> float:
  """CPU seconds the whole machine has been busy."""
  return busy_jiffies()[0] / os.sysconf('SC_CLK_TCK')


def run_once(config: str, steps: int, workdir: str, cache: str | None) -> dict:
  env = dict(os.environ)
  env.pop(CACHE_ENV, None)
  if cache:
    env[CACHE_ENV] = cache
  cmd = [sys.executable, '-m', 'experiments.train', f'--config={_with_steps(config, steps)}',
         f'--workdir={workdir}']
  t0, busy0 = time.perf_counter(), _busy_s()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  cpu = usage.ru_utime + usage.ru_stime
  # the share of the machine that other processes used meanwhile (0: a quiet machine)
  other = max(_busy_s() - busy0 - cpu, 0.0) / (wall * (os.cpu_count() or 1))
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out[-3000:]}')
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  # What the run computed, without its clock: must not depend on where the programs came from.
  computed = [{k: v for k, v in r.items() if 'time' not in k and not k.endswith('_s')}
              for r in rows]
  return {'wall_s': wall, 'cpu_s': cpu, 'peak_rss_mb': usage.ru_maxrss / 1024,
          'other_load': other, 'computed': computed}


def main(argv):
  del argv
  import numpy as np
  if FLAGS.repeats < 1:
    raise app.UsageError(f'--repeats={FLAGS.repeats}: must be at least 1')
  for config in FLAGS.configs:
    runs = {'no_cache': [], 'empty_cache': [], 'filled_cache': []}
    computed = None
    for _ in range(FLAGS.repeats):
      tmp = tempfile.mkdtemp(prefix='compile_cache_')
      cache = os.path.join(tmp, 'xla_cache')
      try:
        for variant, c in (('no_cache', None), ('empty_cache', cache), ('filled_cache', cache)):
          r = run_once(config, FLAGS.steps, os.path.join(tmp, variant), c)
          if computed is None:
            computed = r['computed']
          elif r['computed'] != computed:
            raise RuntimeError(f'{config}: the {variant} run computed other values than the '
                               'first run')
          runs[variant].append(r)
          print(f'  {config} {variant}: {r["wall_s"]:.1f} s wall, {r["cpu_s"]:.1f} s CPU, '
                f'{r["peak_rss_mb"]:.0f} MiB, other load {r["other_load"]:.2f}', file=sys.stderr,
                flush=True)
        entries = len(os.listdir(cache)) if os.path.isdir(cache) else 0
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda v, k: float(np.median([r[k] for r in runs[v]]))
    row = {'config': config, 'steps': FLAGS.steps, 'repeats': FLAGS.repeats,
           'cache_entries': entries, 'same_values': True,
           'cpu_count': os.cpu_count()}
    for v in runs:
      for k in ('wall_s', 'cpu_s', 'peak_rss_mb'):
        row[f'{v}_{k}'] = med(v, k)
    row['other_load_max'] = max(r['other_load'] for v in runs for r in runs[v])
    row['filled_over_no_cache_wall'] = row['filled_cache_wall_s'] / row['no_cache_wall_s']
    row['filled_over_no_cache_cpu'] = row['filled_cache_cpu_s'] / row['no_cache_cpu_s']
    emit(json.dumps(row), FLAGS.out)


if __name__ == '__main__':
  app.run(main)
