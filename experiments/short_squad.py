r"""Short SQuAD: train GradMem (or a baseline) on SQuAD sentences and evaluate it.

  python -m experiments.short_squad --config=configs/short_squad.py[:preset,key=value,...] \
      [--workdir=DIR]

Generation-based SQuAD EM/F1 of a trained run:
  python -m experiments.evaluate --workdir=DIR --K_eval=1,2,5 --generate
"""
from __future__ import annotations

from absl import app

from gradmem_jax.training import cli

_CONFIG, _WORKDIR = cli.define_flags('configs/short_squad.py')
main = cli.make_main(_CONFIG, _WORKDIR, prefix='gradmem_squad_')

if __name__ == '__main__':
  app.run(main)
