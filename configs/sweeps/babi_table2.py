"""The paper's Table 2 bAbI rows with pretrained GPT-2 124M (SPEC §6: GradMem K=1 100 / 94.2 / 80.0
/ 100 / 99.2 on QA1-5), in one command, given the weights in a local Hugging Face directory:

  python -m experiments.sweep --config=configs/babi.py:hf_checkpoint=/models/gpt2 \
      --sweep=configs/sweeps/babi_table2.py --sweep_dir=runs/babi_table2 --K_eval=1,2,5
  python -m experiments.report --sweep_dir=runs/babi_table2

Points: QA1-QA5 x {GradMem K=1, 2, 5; RMT x1; full-context GPT-2}, the `gpt2` preset of
configs/babi.py (m=8, inner lr 0.4, learned projection, bf16, dropout 0.1 inside WRITE and READ,
lr 1e-4, batch 64, 10k warmup, stop at EM 1.0). QA3 keeps each story's last 100 statements
(extended back to the earliest supporting fact, which is at most 31 statements back): its longest
stories (1,333 words) do not fit GPT-2's 1,024 positions, and 99% of them have at most 180
statements, so this cuts about 5% of the QA3 stories and never drops a supporting fact. Variant
`qa1` runs QA1 alone.

Variant `cpu`: issue 13's from-scratch table on 2 CPU cores. The default CPU model of
configs/babi.py (word-level 2x64 Llama), QA1-QA5 x {GradMem K=1, RMT x1 with the memory projection,
full context}, 10 minutes of training each (about 2.5 hours in all):

  python -m experiments.sweep --config=configs/babi.py --sweep=configs/sweeps/babi_table2.py:cpu \
      --sweep_dir=runs/babi_cpu_table
  python -m experiments.report --sweep_dir=runs/babi_cpu_table
"""
from configs.common import RMT_X1
from gradmem_jax.sweeps import Sweep, concat, grid


def _points(tasks):
  methods = concat(grid(method=['gradmem'], K=[1, 2, 5]), grid(method=['rmt'], K=[1]),
                   grid(method=['full_context']))
  pts = []
  for t in tasks:
    for m in methods:
      p = dict(task_id=t, **m)
      if t == 3:
        p['max_story_sentences'] = 100
      pts.append(p)
  return pts


def _cpu_points():
  methods = [dict(method='gradmem', K=1), RMT_X1, dict(method='full_context')]
  return [dict(task_id=t, **m) for t in (1, 2, 3, 4, 5) for m in methods]


def get_sweep(arg=None):
  variant = arg or 'all'
  if variant == 'cpu':
    return Sweep('babi_cpu_table', _cpu_points(), base='steps=20000,minutes=10',
                 description='bAbI QA1-5 from scratch on CPU, 10 minutes per run',
                 figures=('em_vs:babi_task',))
  if variant == 'all':
    return Sweep('babi_table2', _points([1, 2, 3, 4, 5]), base='gpt2',
                 description='Table 2 bAbI rows, pretrained GPT-2 124M', figures=('em_vs:babi_task',))
  if variant == 'qa1':
    return Sweep('babi_table2_qa1', _points([1]), base='gpt2',
                 description='Table 2 bAbI QA1, pretrained GPT-2 124M', figures=('em_by_method',))
  raise ValueError(f'unknown variant {variant!r}; allowed: all, qa1, cpu')
