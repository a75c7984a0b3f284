"""The paper's three KV claims (SPEC §6) as sweeps, for `experiments.claims`:

  1. GradMem beats a forward-only writer (RMT) with the same memory size;
  2. more gradient steps scale capacity better than repeated forward writes (GradMem K=1/2/5 vs
     RMT x1/x2/x5 as N grows);
  3. the second-order meta-gradient is essential (first order collapses).

Variants (`--sweep=configs/sweeps/claims.py:<variant>`):
  tune       the fairness grid first: at N=4, GradMem K=1 over inner lr x outer lr and RMT x1 over
             memory update x outer lr, 2,000 steps, seed 0, each started from its own N=2 run
             (2,000 steps, lr 1e-3). Put the winners in TUNED below.
  cpu        the claims at CPU scale: the default CPU model, N in {2, 4, 8}, GradMem K=1/2/5, RMT
             x1/x2/x5 (replace; residual where TUNED says), first-order GradMem K=1/2, seeds 0-2.
             RMT points carry TUNED's max_steps=12000, which a user's `steps=` does not shorten
             (a point's own values are applied last).
             Curriculum in N as the paper: each N > 2 starts from the same method's and seed's
             best parameters at the previous N (fresh optimizer). Every point stops at 99% EM or
             4,000 steps (RMT: 12,000, see TUNED).
  cpu_seed0  `cpu` with seed 0 only (a third of the runs: the first pass).
  k1_seeds   `cpu`'s seeds 1-2 for the K=1 settings (claims 1 and 3) at N in {2, 4}: the spread
             over seeds for the two claims the CPU can afford three seeds of (about an hour per
             seed). The same points, names and curriculum sources as `cpu`, so a later `cpu` run
             in the same sweep dir skips them.
  k2_seeds   `cpu`'s seeds 1-2 for claim 2's K=2 pair (GradMem K=2, RMT x2) at N in {2, 4}, seed 1
             first (about 100 minutes per seed on 2 cores, most of it RMT x2's 12,000 steps). Like
             `k1_seeds`, a part of `cpu` (same point names and curriculum sources).
  k5_seed0   `cpu`'s K=5 pair of claim 2 (GradMem K=5, RMT x5) at N in {2, 4}, seed 0: GradMem's
             two runs first (about an hour on 2 cores), then RMT x5's (its 12,000 steps: about two
             hours). A part of `cpu`, like `k1_seeds`.
  k5_seeds   the same K=5 pair for seeds 1-2 (about 3-4 hours per seed on 2 cores).
  equal_budget  GradMem K=1 (second order) at RMT's step budget (12,000 steps, not 4,000),
             seeds 1, 2, 0 (in that order), N in {2, 4}: `cpu`'s GradMem seeds 1-2 were still
             rising at 4,000 steps (a plateau near 30% EM that each seed leaves at a different
             step). Its own sweep dir; `experiments.claims
             --sweep_dir=runs/claims_cpu,runs/claims_equal_budget --out=DIR` puts these runs in
             place of `cpu`'s GradMem K=1 points (same label, N and seed).
  tune_first_order  claim 3's baseline tuned too: `cpu` gives first order second order's inner
             lr; is first order just mis-tuned there? First-order GradMem K=1 and K=2 at N=2
             over inner lr {0.04 (the paper's), 0.1, 0.3 (TUNED), 1, 3, 10 (the top of the
             paper's search range)}, outer lr 1e-3, 4,000 steps, seed 0 (K=1's points first:
             about 5 minutes each on a core). Its own sweep dir; experiments.report tables it.
  baselines  the paper's two full-context baselines at CPU scale, beside the claims: the
             transformer reading the whole context (its KV cache is the memory) and Mamba
             reading it through its fixed-size recurrent state (`preset=mamba`: the same width
             and depth), N in {2, 4, 8}, seeds 0-2, 4,000 steps or 99% EM, with `cpu`'s
             curriculum in N (from scratch, the transformer reached 13.1% at N = 4 in 4,000
             steps, seed 0). Its own sweep dir; `experiments.claims --sweep_dir=<cpu's
             dirs>,runs/claims_baselines` puts them in the claims table and figure.
  depth      claim 1 on a 4-layer model (model.num_layers=4): GradMem K=1 and RMT x1 at N in {2, 4},
             seed 0, up to 8,000 steps (RMT: its 12,000): does claim 1 hold on a deeper model?
  paper      the same points with the paper's model and recipe (paper_n16: 4 x 128, lr 1e-4,
             warmup 10k, batch 64, stop at EM 1.0), N in {4, 8, 16, 32, 64}, seeds 0-2: for a GPU or
             a TPU pod (`--dry_run` prints one command per point).

  python -m experiments.sweep --sweep=configs/sweeps/claims.py:tune --sweep_dir=runs/claims_tune
  python -m experiments.sweep --sweep=configs/sweeps/claims.py:cpu --sweep_dir=runs/claims_cpu \
      --K_eval=1,2,5,8
  python -m experiments.claims --sweep_dir=runs/claims_cpu
"""
from gradmem_jax.sweeps import Sweep, concat, grid, slug, with_seeds

# From the `tune` variant (benchmarks/results/claims_tune/tuning.md, 2026-11-27): GradMem K=1 is
# best at inner lr 0.3, outer lr 1e-3 (56.4% EM at N=4; inner lr 1.0, the CPU preset's, 11.4%).
# RMT x1 learned nothing there (chance at N=2 and N=4): without a memory projection the 2-layer
# model's forward writer stays at 0% EM even at N=2 after 12,000 steps, while with the learned
# projection (memory.mem_proj='proj', identity init) it learns, slowly (N=2: 14% EM at 6,000
# steps and rising; benchmarks/results/claims_tune/rmt_depth.md). So RMT takes the projection and
# three times GradMem's step budget (its steps are cheaper: up to about 2x GradMem's wall time).
TUNED = {
    'gradmem': {'inner_lr': 0.3, 'lr': 1e-3},
    'rmt': {'memory.rmt_update': 'replace', 'memory.mem_proj': 'proj', 'lr': 1e-3,
            'max_steps': 12000},
}

def _methods(tuned: dict) -> list[dict]:
  """By K, the cheap K=1 settings first: GradMem K=k, RMT xk, first-order GradMem K=k (k <= 2).
  A partial pass then already answers claims 1 and 3 at every N (and a rerun keeps this order)."""
  out = []
  for k in (1, 2, 5):
    out += [dict(method='gradmem', K=k, **tuned['gradmem']), dict(method='rmt', K=k, **tuned['rmt'])]
    if k <= 2:
      out.append(dict(method='gradmem', K=k, grad_mode='first', **tuned['gradmem']))
  return out


METHODS = _methods(TUNED)
# The paper variant keeps the paper's recipe (paper_n16: lr, inner lr, steps, no memory
# projection); the 4-layer paper model's RMT learns without one (rmt_depth.md).
PAPER_METHODS = _methods({'gradmem': {}, 'rmt': {}})


# The paper's full-context baselines: the transformer reading the whole context, and Mamba reading
# it through its recurrent state (preset mamba: the same width and depth).
BASELINE_METHODS = [{'method': 'full_context'}, {'preset': 'mamba', 'method': 'full_context'}]


# The depth check of claim 1: does GradMem's lead hold on a deeper model, where the forward
# writer learns faster? (Without a projection, RMT x1 stays at 0% on 2 layers and learns on 4:
# 37.7% at N=2 after 6,000 steps; benchmarks/results/claims_tune/rmt_depth.md.)
DEPTH_METHODS = [dict(method='gradmem', K=1, **TUNED['gradmem']), dict(method='rmt', K=1,
                                                                         **TUNED['rmt'])]


def _claims(name: str, ns, seeds, base: str, description: str, methods=None) -> Sweep:
  points, init_from = [], {}
  for seed in seeds:
    for m in (METHODS if methods is None else methods):
      prev = None
      for n in ns:  # ascending N: the curriculum source comes first
        p = dict(n_pairs=n, **m, seed=seed)
        points.append(p)
        if prev is not None:
          init_from[slug(p)] = slug(prev)
        prev = p
  return Sweep(name, points, base=base, description=description,
               figures=('em_vs:n_pairs', 'k_extrapolation'), init_from=init_from)


TUNE_INNER_LRS = (0.3, 1.0, 3.0)
TUNE_LRS = (3e-4, 1e-3, 3e-3)
TUNE_STEPS = 'max_steps=2000,train.eval_every=500'


def _tune() -> Sweep:
  """The fairness grid at N=4, each point started (curriculum, as the claims runs) from its own
  method's N=2 run: GradMem K=1 per inner lr, RMT x1 per memory update, 2,000 steps at lr 1e-3.
  From scratch, 2,000 steps at N=4 leave GradMem K=1 at 0-1.3% EM for inner lr 0.3 and outer lr
  3e-4 / 1e-3 (the first pass of this grid, abandoned): too short to rank anything."""
  points, init_from = [], {}
  sources = ([dict(method='gradmem', K=1, inner_lr=x) for x in TUNE_INNER_LRS]
             + [{'method': 'rmt', 'K': 1, 'memory.rmt_update': u} for u in ('replace', 'residual')])
  for src in sources:
    first = dict(n_pairs=2, **src, lr=1e-3)
    points.append(first)
    for lr in TUNE_LRS:
      p = dict(n_pairs=4, **src, lr=lr)
      points.append(p)
      init_from[slug(p)] = slug(first)
  return Sweep('claims_tune', points, base=TUNE_STEPS,
               description='fairness grid at N=4 (from each method\'s N=2 run) before the claims '
                           'runs', figures=('em_by_method',), init_from=init_from)


TUNE_FIRST_ORDER_INNER_LRS = (0.04, 0.1, 0.3, 1.0, 3.0, 10.0)


def _tune_first_order(base: str) -> Sweep:
  points = [dict(n_pairs=2, method='gradmem', K=k, grad_mode='first', inner_lr=x,
                 lr=TUNED['gradmem']['lr'], seed=0)
            for k in (1, 2) for x in TUNE_FIRST_ORDER_INNER_LRS]
  return Sweep('claims_tune_first_order', points, base=base,
               description='first-order GradMem over inner lr at N=2 (claim 3\'s baseline)',
               figures=('em_by_method',))


def get_sweep(arg=None):
  variant = arg or 'cpu'
  if variant == 'tune':
    return _tune()
  cpu_base = 'max_steps=4000,train.eval_every=500,train.target_em=0.99'
  if variant == 'cpu':
    return _claims('claims_cpu', [2, 4, 8], [0, 1, 2], cpu_base,
                   'KV claims at CPU scale (default CPU model), curriculum in N')
  if variant == 'cpu_seed0':
    return _claims('claims_cpu', [2, 4, 8], [0], cpu_base,
                   'KV claims at CPU scale, seed 0 (first pass)')
  if variant == 'k1_seeds':
    return _claims('claims_cpu', [2, 4], [1, 2], cpu_base,
                   'KV claims 1 and 3 at CPU scale, seeds 1-2, N in {2, 4}',
                   methods=[m for m in METHODS if m['K'] == 1])
  if variant == 'k2_seeds':
    return _claims('claims_cpu', [2, 4], [1, 2], cpu_base,
                   'KV claim 2 at CPU scale (GradMem K=2 vs RMT x2), seeds 1-2, N in {2, 4}',
                   methods=[m for m in METHODS if m['K'] == 2 and 'grad_mode' not in m])
  if variant == 'k5_seed0':
    return _claims('claims_cpu', [2, 4], [0], cpu_base,
                   'KV claim 2 at CPU scale (GradMem K=5 vs RMT x5), seed 0, N in {2, 4}',
                   methods=[m for m in METHODS if m['K'] == 5])
  if variant == 'k5_seeds':
    return _claims('claims_cpu', [2, 4], [1, 2], cpu_base,
                   'KV claim 2 at CPU scale (GradMem K=5 vs RMT x5), seeds 1-2, N in {2, 4}',
                   methods=[m for m in METHODS if m['K'] == 5])
  if variant == 'equal_budget':
    return _claims('claims_equal_budget', [2, 4], [1, 2, 0], cpu_base,
                   'GradMem K=1 at RMT\'s 12,000-step budget, seeds 0-2, N in {2, 4}',
                   methods=[dict(METHODS[0], max_steps=TUNED['rmt']['max_steps'])])
  if variant == 'tune_first_order':
    return _tune_first_order(cpu_base)
  if variant == 'baselines':
    return _claims('claims_baselines', [2, 4, 8], [0, 1, 2], cpu_base,
                   'full-context transformer and Mamba at CPU scale, curriculum in N',
                   methods=BASELINE_METHODS)
  if variant == 'depth':
    return _claims('claims_depth', [2, 4], [0],
                   'model.num_layers=4,max_steps=8000,train.eval_every=500,train.target_em=0.99',
                   'claim 1 on a 4-layer CPU model, where RMT x1 learns', methods=DEPTH_METHODS)
  if variant == 'paper':
    return _claims('claims_paper', [4, 8, 16, 32, 64], [0, 1, 2], 'paper_n16',
                   'KV claims, paper model and recipe, curriculum in N', methods=PAPER_METHODS)
  raise ValueError(f'unknown variant {variant!r}; allowed: tune, cpu, cpu_seed0, k1_seeds, '
                   'k2_seeds, k5_seed0, k5_seeds, equal_budget, tune_first_order, baselines, '
                   'depth, paper')
