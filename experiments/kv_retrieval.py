r"""Key-value retrieval: train GradMem (or a baseline) and evaluate it.

  python -m experiments.kv_retrieval --config=configs/kv_retrieval.py[:preset,key=value,...] \
      [--workdir=DIR] [--config.optim.lr=3e-4]

Without --workdir a temporary directory is used (and printed). Rerunning with the same workdir
resumes from its latest checkpoint.
"""
from __future__ import annotations

from absl import app

from gradmem_jax.training import cli

_CONFIG, _WORKDIR = cli.define_flags('configs/kv_retrieval.py')
main = cli.make_main(_CONFIG, _WORKDIR, prefix='gradmem_kv_')

if __name__ == '__main__':
  app.run(main)
