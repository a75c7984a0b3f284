"""Inner learning-rate grid (the paper searched [0.01, 10])."""
from gradmem_jax.sweeps import Sweep, grid


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'cpu':
    return Sweep('inner_lr_cpu', grid(inner_lr=[0.1, 0.3, 1.0, 3.0]),
                 base='max_steps=2000,train.eval_every=500', figures=('em_vs:inner_lr',))
  if variant == 'paper':
    return Sweep('inner_lr_paper_n16', grid(inner_lr=[0.01, 0.04, 0.1, 0.4, 1.0, 4.0, 10.0]),
                 base='paper_n16', figures=('em_vs:inner_lr',))
  raise ValueError(f'unknown variant {variant!r}; allowed: cpu, paper')
