r"""Short SQuAD: train GradMem (or a baseline) on SQuAD sentences and evaluate it.

  python -m experiments.short_squad --config=configs/short_squad.py[:preset,key=value,...] \
      [--workdir=DIR]

Generation-based SQuAD EM/F1 of a trained run:
  python -m experiments.evaluate --workdir=DIR --K_eval=1,2,5 --generate
"""
from __future__ import annotations

import tempfile

from absl import app, flags
from ml_collections import config_flags

from gradmem_jax.training import train_and_evaluate
from gradmem_jax.training.mesh import finish_distributed

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/short_squad.py',
                                          'Experiment config file[:presets,overrides].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, metrics, results).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='gradmem_squad_')
  if not _WORKDIR.value:
    print(f'no --workdir given: writing to {workdir}', flush=True)
  train_and_evaluate(_CONFIG.value, workdir)
  finish_distributed()


if __name__ == '__main__':
  app.run(main)
