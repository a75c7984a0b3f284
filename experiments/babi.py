r"""bAbI QA: train GradMem (or a baseline) on one bAbI task and evaluate it.

  python -m experiments.babi --config=configs/babi.py[:qa2,K=2,...] [--workdir=DIR]

Rerunning with the same workdir resumes from its latest checkpoint.
"""
from gradmem_jax.training import cli

if __name__ == '__main__':
  cli.run('configs/babi.py')
