"""What does one more WRITE step buy? K in {1, 2, 3, 5} at a fixed number of pairs.

  python -m experiments.sweep --sweep=configs/sweeps/k_steps.py:cpu --sweep_dir=/tmp/sweep_k \
      --K_eval=0,1,2,3,5,8
  python -m experiments.sweep --sweep=configs/sweeps/k_steps.py:paper --sweep_dir=/mnt/shared/k16 --dry_run
"""
from gradmem_jax.sweeps import Sweep, grid, with_seeds


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'cpu':  # the default CPU preset (2 pairs), shortened: 16 min of training on 2 cores
    return Sweep('k_steps_cpu', grid(K=[1, 2, 3, 5]), base='max_steps=2000,train.eval_every=500',
                 description='K sweep, CPU preset, 2 pairs, 2000 steps',
                 figures=('em_vs:K', 'k_extrapolation'))
  if variant == 'paper':  # paper model and recipe, 16 pairs, 3 seeds
    return Sweep('k_steps_paper_n16', with_seeds(grid(K=[1, 2, 3, 5]), [0, 1, 2]),
                 base='paper_n16', description='K sweep, paper KV model, 16 pairs',
                 figures=('em_vs:K', 'k_extrapolation'))
  raise ValueError(f'unknown variant {variant!r}; allowed: cpu, paper')
