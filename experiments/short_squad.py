r"""Short SQuAD: train GradMem (or a baseline) on SQuAD sentences and evaluate it.

  python -m experiments.short_squad --config=configs/short_squad.py[:preset,key=value,...] \
      [--workdir=DIR]

Generation-based SQuAD EM/F1 of a trained run:
  python -m experiments.evaluate --workdir=DIR --K_eval=1,2,5 --evaluators=teacher_forced,generate
"""
from gradmem_jax.training import cli

if __name__ == '__main__':
  cli.run('configs/short_squad.py')
