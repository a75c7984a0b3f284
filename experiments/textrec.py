r"""Text reconstruction: write a span of natural text into memory and reconstruct it.

  python -m experiments.textrec --config=configs/textrec.py[:squad,m=1,...] [--workdir=DIR]

Rerunning with the same workdir resumes from its latest checkpoint.
"""
from gradmem_jax.training import cli

if __name__ == '__main__':
  cli.run('configs/textrec.py')
