r"""XLA's memory plan of the GradMem training step, without running it and without a GPU.

For each configuration, compiles the paper KV model's training step (as benchmarks/train_step.py
builds it) on this machine's CPU backend and prints, one JSON object per line, what XLA's buffer
assignment reserves: temporaries (activations and residuals kept for the backward passes),
arguments (parameters, optimizer state, batch) and outputs, in MiB, beside XLA's FLOP count of the
compiled program (a rolled loop's body counted once: a micro-batched step shows one chunk's).

What it is for: choosing a memory-lean setting (micro-batch, inner-step remat) before a GPU
session, where peak device memory is measured for real (benchmarks/train_step.py on the card, or
the side-by-side kit with --project_micro_batch / --project_args=--remat=...). The CPU and GPU
backends fuse differently, so the absolute MiB differ from a GPU's peak (K=2, 16 pairs, batch 64:
3,208 MiB planned here, 2.0 GiB measured on an H200); the ratios between settings are the estimate.
Nothing is timed, so another job on the machine does not disturb it.

  python benchmarks/memory_plan.py                                  # K=2, 16 pairs, batch 64
  python benchmarks/memory_plan.py --Ks=1,2,5 --micro=0,16 --remat=none,full
  python benchmarks/memory_plan.py --n_pairs=64 --batch=16 --micro=0,4 --out=plan.jsonl \
      --overrides=model.attn_q_block=0    # dense attention, as on a GPU
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from rows import emit  # noqa: E402  (beside this script)

flags.DEFINE_string('Ks', '2', 'comma list of WRITE steps K')
flags.DEFINE_string('modes', 'second', 'comma list of gradient modes')
flags.DEFINE_integer('n_pairs', 16, 'key-value pairs per context')
flags.DEFINE_integer('batch', 64, 'batch size')
flags.DEFINE_string('micro', '0,16', 'comma list of micro-batch sizes (0: the whole batch at once, '
                    'as on a GPU)')
flags.DEFINE_string('remat', 'none,full', 'comma list of inner-step remat policies')
flags.DEFINE_string('overrides', '', 'extra config overrides (key=value,...) for every row, e.g. '
                    'model.attn_q_block=0 for the dense attention a GPU runs (the CPU default '
                    'blocks the queries of contexts over 128 tokens)')
flags.DEFINE_string('out', '', 'also append the JSON lines to this file')
FLAGS = flags.FLAGS


def plan(K: int, mode: str, n_pairs: int, batch: int, micro: int, remat: str,
         overrides: str = '') -> dict:
  import jax
  from gradmem_jax.training import make_train_step
  from gradmem_jax.training.evaluators import xla_cost
  from kv_setup import experiment_state_batch, paper_kv_config

  config = paper_kv_config(n_pairs=n_pairs, K=K, mode=mode, batch=batch, micro=micro,
                           overrides=overrides, remat=remat)
  exp, state, batch_arrays = experiment_state_batch(config, batch)
  micro = exp.config.optim.micro_batch_size  # as resolved (-1: the library's rule for this backend)
  t0 = time.perf_counter()
  compiled = jax.jit(make_train_step(exp), donate_argnums=0).lower(
      state, batch_arrays, jax.random.PRNGKey(1)).compile()
  mem = compiled.memory_analysis()
  mib = lambda b: round(b / 2**20, 1)
  return {'K': K, 'grad_mode': mode, 'n_pairs': n_pairs, 'batch': batch, 'micro_batch': micro,
          'remat': remat, 'overrides': overrides, 'temp_mib': mib(mem.temp_size_in_bytes),
          'argument_mib': mib(mem.argument_size_in_bytes),
          'output_mib': mib(mem.output_size_in_bytes),
          'xla_gflop_counted': round(float(xla_cost(compiled).get('flops', float('nan'))) / 1e9,
                                     1),
          'compile_s': round(time.perf_counter() - t0, 1), 'platform': jax.devices()[0].platform,
          'jax': jax.__version__}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  def ints(text, name):
    try:
      vals = [int(x) for x in text.split(',') if x.strip()]
    except ValueError:
      raise app.UsageError(f'--{name}: {text!r} is not a comma list of integers')
    if not vals:
      raise app.UsageError(f'--{name} is empty')
    return vals

  micros = ints(FLAGS.micro, 'micro')
  bad = [m for m in micros if m < -1 or (m > 0 and FLAGS.batch % m)]
  if bad:  # before any compile (each takes a minute or more)
    raise app.UsageError(f'--micro: {bad} must be -1 (the library\'s rule), 0 (the whole batch) '
                         f'or a divisor of --batch={FLAGS.batch}')
  for K, mode, micro, remat in itertools.product(
      ints(FLAGS.Ks, 'Ks'), [m for m in FLAGS.modes.split(',') if m], micros,
      [r for r in FLAGS.remat.split(',') if r]):
    row = plan(K, mode, FLAGS.n_pairs, FLAGS.batch, micro, remat, FLAGS.overrides)
    emit(json.dumps(row), FLAGS.out)  # row by row: a kill keeps the rows already planned


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  app.run(main)
