"""bAbI from scratch on CPU with a curriculum in story length (issue 13, item 1).

The default CPU model (configs/babi.py: word-level 2x64 Llama) trained on whole QA1 stories stalls
at the recency heuristic (~50% EM: the last location named scores 53.8%), for GradMem and full
context alike (benchmarks/results/babi_cpu/notes.md). On stories cut to their last two statements
(`max_story_sentences=2`, always extended back to the supporting fact) the memory methods learn to
bind a name to its location. Each later stage starts from the same method's best parameters of the
stage before (fresh optimizer), as the KV claims' curriculum in N does:

  stage 1: the last 2 statements, up to 4,000 steps
  stage 2: the last 4 statements, up to 3,000 steps
  stage 3: whole stories (the task itself), up to 6,000 steps

for GradMem K=1, RMT x1 (with the memory projection) and full context; every stage stops at 99%
validation EM (on its own stories).

  python -m experiments.sweep --config=configs/babi.py --sweep=configs/sweeps/babi_curriculum.py \\
      --sweep_dir=runs/babi_curriculum
  python -m experiments.report --sweep_dir=runs/babi_curriculum

Variant `qa:T` runs bAbI task T (1-5) instead of QA1.
"""
from configs.common import RMT_X1
from gradmem_jax.sweeps import Sweep, slug

STAGES = ((2, 4000), (4, 3000), (0, 6000))  # (max_story_sentences, max steps); 0 = whole stories
METHODS = ({'method': 'gradmem', 'K': 1},
           RMT_X1,
           {'method': 'full_context'})


def get_sweep(arg=None):
  task = 1
  if arg:
    name, _, value = arg.partition(':')
    if name != 'qa' or value not in ('1', '2', '3', '4', '5'):
      raise ValueError(f'unknown variant {arg!r}; allowed: qa:1 .. qa:5 (default QA1)')
    task = int(value)
  points, init_from = [], {}
  for m in METHODS:
    prev = None
    for cut, steps in STAGES:
      p = dict(task_id=task, **m, max_story_sentences=cut, max_steps=steps)
      points.append(p)
      if prev is not None:
        init_from[slug(p)] = slug(prev)
      prev = p
  return Sweep(f'babi_curriculum_qa{task}', points,
               base='train.eval_every=500,train.target_em=0.99',
               description=f'bAbI QA{task} from scratch, curriculum in story length',
               figures=('em_by_method',), init_from=init_from)
