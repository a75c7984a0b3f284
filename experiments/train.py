r"""Train any registered task with any registered method: the config names both.

  python -m experiments.train --config=configs/kv_retrieval.py:paper_n16,K=2 --workdir=DIR

(experiments/kv_retrieval.py and experiments/short_squad.py are this entry point with a default
config; sweeps launch this one.)
"""
from gradmem_jax.training import cli

if __name__ == '__main__':
  cli.run(None)
