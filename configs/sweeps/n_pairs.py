"""Capacity: EM against the number of pairs N for GradMem K = 1, 2, 5 and RMT x1 (paper Fig. 3)."""
from configs.common import RMT_X1
from gradmem_jax.sweeps import Sweep, concat, grid, with_seeds


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'cpu':
    # RMT with the learned memory projection: without it the 2-layer CPU model's forward writer
    # collapses (benchmarks/results/claims_tune/rmt_depth.md).
    pts = concat(grid(n_pairs=[2, 4], method=['gradmem'], K=[1, 2]),
                 [dict(n_pairs=n, **RMT_X1) for n in (2, 4)])
    return Sweep('n_pairs_cpu', pts, base='max_steps=2000,train.eval_every=500',
                 description='N sweep on the CPU preset', figures=('em_vs:n_pairs',))
  if variant == 'paper':
    pts = concat(grid(n_pairs=[4, 8, 16, 32], method=['gradmem'], K=[1, 2, 5]),
                 grid(n_pairs=[4, 8, 16, 32], method=['rmt'], K=[1]))
    # paper_n16 sets the model and recipe; n_pairs then overrides N.
    return Sweep('n_pairs_paper', with_seeds(pts, [0, 1, 2]), base='paper_n16',
                 description='N sweep, paper KV model', figures=('em_vs:n_pairs',))
  raise ValueError(f'unknown variant {variant!r}; allowed: cpu, paper')
