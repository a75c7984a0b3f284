r"""Key-value retrieval: train GradMem (or a baseline) and evaluate it.

  python -m experiments.kv_retrieval --config=configs/kv_retrieval.py[:preset,key=value,...] \
      [--workdir=DIR] [--config.optim.lr=3e-4]

Rerunning with the same workdir resumes from its latest checkpoint.
"""
from gradmem_jax.training import cli

if __name__ == '__main__':
  cli.run('configs/kv_retrieval.py')
