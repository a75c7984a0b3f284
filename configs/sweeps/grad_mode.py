"""Second- versus first-order meta-gradients (paper: first order fails, e.g. 46.7% vs 100% at 8
pairs, K=2)."""
from gradmem_jax.sweeps import Sweep, grid


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'cpu':
    return Sweep('grad_mode_cpu', grid(grad_mode=['second', 'first'], K=[1, 2]),
                 base='max_steps=2000,train.eval_every=500', figures=('em_vs:K',))
  if variant == 'paper':
    return Sweep('grad_mode_paper', grid(n_pairs=[8, 16], grad_mode=['second', 'first'], K=[1, 2]),
                 base='paper_n8', figures=('em_vs:K',))
  raise ValueError(f'unknown variant {variant!r}; allowed: cpu, paper')
