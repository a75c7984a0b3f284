"""EM by memory size m and K (paper Fig. 10)."""
from gradmem_jax.sweeps import Sweep, grid


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'cpu':
    return Sweep('memory_size_cpu', grid(m=[1, 2, 4, 8], K=[1, 2]),
                 base='max_steps=2000,train.eval_every=500', figures=('em_vs:num_memory',))
  if variant == 'paper':
    return Sweep('memory_size_paper_n16', grid(m=[1, 2, 4, 8], K=[1, 2, 5]), base='paper_n16',
                 figures=('em_vs:num_memory',))
  raise ValueError(f'unknown variant {variant!r}; allowed: cpu, paper')
