r"""Compile time and step time of the training step with the blocks unrolled or scanned
(`model.scan_layers`), one fresh process per variant; prints one JSON object per line.

  python benchmarks/compile_time.py                                  # SmolLM2-135M on bAbI QA1
  python benchmarks/compile_time.py --config=configs/kv_retrieval.py:paper_n16 --overrides=

Each row: seconds to trace and lower (`lower_s`) and to compile (`compile_s`) the jitted
training step ahead of time, then the median, min and max over `--steps` timed steps after one
warm-up step, and the first step's loss (the two variants must agree to float rounding: the same
weights, batch and random numbers). Compile times are wall-clock and depend on the machine's
load; compare them only within one run, as ratios.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from rows import emit  # noqa: E402  (beside this script)

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/babi.py:smollm2,qa1',
                    'config file and presets, as the runners take it')
flags.DEFINE_string('overrides', 'model.dtype=float32,optim.batch_size=4',
                    'extra key=value overrides for every variant')
flags.DEFINE_string('variants', 'false,true', 'comma list of model.scan_layers values')
flags.DEFINE_integer('steps', 3, 'timed steps after the warm-up step')
flags.DEFINE_string('out', '', 'also append the JSON lines to this file')
flags.DEFINE_string('one', '', 'internal: run this scan_layers value in this process')


def run_one(scan: bool) -> dict:
  import jax
  import numpy as np

  from gradmem_jax import config_lib
  from gradmem_jax.training import make_train_step
  from kv_setup import experiment_state_batch

  path, _, arg = FLAGS.config.partition(':')
  arg = ','.join(a for a in (arg, FLAGS.overrides, f'model.scan_layers={scan}') if a)
  config = config_lib.load_config(f'{path}:{arg}')
  exp, state, batch = experiment_state_batch(config)
  rng = jax.random.PRNGKey(1)
  fn = jax.jit(make_train_step(exp), donate_argnums=0)
  t0 = time.perf_counter()
  lowered = fn.lower(state, batch, rng)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  state, m = compiled(state, batch, rng)
  loss_first = float(jax.block_until_ready(m['loss']))
  times = []
  for _ in range(FLAGS.steps):
    t = time.perf_counter()
    state, m = compiled(state, batch, rng)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return {'config': FLAGS.config, 'overrides': FLAGS.overrides, 'scan_layers': scan,
          'num_layers': exp.config.model.get('num_layers'), 'lower_s': t1 - t0,
          'compile_s': t2 - t1, 'hlo_chars': len(lowered.as_text()),
          'step_s_median': float(np.median(times)), 'step_s_min': float(min(times)),
          'step_s_max': float(max(times)), 'loss_first': loss_first,
          'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__}


def main(argv):
  del argv
  if FLAGS.one:
    print(json.dumps(run_one(FLAGS.one == 'true')), flush=True)
    return
  for v in FLAGS.variants.split(','):
    cmd = [sys.executable, os.path.abspath(__file__), f'--one={v}', f'--config={FLAGS.config}',
           f'--overrides={FLAGS.overrides}', f'--steps={FLAGS.steps}']
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
    if out.returncode or not lines:
      lines = [json.dumps({'scan_layers': v, 'error': out.returncode,
                           'stderr_tail': out.stderr[-2000:]})]
    for l in lines:
      emit(l, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
