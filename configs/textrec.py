r"""Text reconstruction (SPEC §3.5, paper App. I): WRITE a span of 8-64 tokens of natural text into
1-2 memory vectors, then reconstruct it from memory alone. Metrics: token accuracy and exact span
match (teacher forced); with `eval.evaluators=teacher_forced,generate` also the exact match of the
greedily generated span (gen_em).

  python -m experiments.textrec --config=configs/textrec.py --workdir=/tmp/textrec
  python -m experiments.textrec --config=configs/textrec.py:m1,K=2 --workdir=/tmp/textrec_m1_k2
  python -m experiments.textrec --config=configs/textrec.py:squad --workdir=/tmp/textrec_squad
  python -m experiments.compare --config=configs/textrec.py --workdir=/tmp/textrec_cmp
  python -m experiments.textrec --config=configs/textrec.py:gpt2,K=5 \
      --config.model.hf_checkpoint=/path/to/gpt2 --workdir=/tmp/textrec_gpt2

The text is what is on disk beside this checkout: the bAbI stories (../shared/data/babi, the
training stories of QA1-QA5) and the SQuAD v1.1 development paragraphs (../shared/data/squad),
split into train / validation by story / article (textrec_task.py).

Presets (bare words after the colon, applied in order): cpu (default: bAbI stories, word tokenizer,
a 2x64 Llama from scratch, m=2, K=1), tiny (seconds-long smoke runs), m1 (one memory vector), squad
(SQuAD paragraphs, byte tokenizer), mixed (SQuAD paragraphs and bAbI stories, bytes), gpt2
(pretrained GPT-2 from a local Hugging Face directory, its tokenizer, SQuAD + bAbI text), rmt,
full_context, first_order. Overrides: key=value with a dotted path or one of ALIASES.
"""
from __future__ import annotations

import ml_collections

from configs import common, kv_retrieval
from gradmem_jax.data.textrec_task import SHARED_BABI, SHARED_SQUAD

ALIASES = dict(kv_retrieval.ALIASES, source='data.source', min_len='data.min_len',
               max_len='data.max_len', tokenizer='data.tokenizer', prompt='data.prompt',
               n_val='data.n_val', babi_dir='data.babi_dir', squad_path='data.squad_path',
               hf_checkpoint='model.hf_checkpoint', minutes='train.max_minutes')
ALIASES.pop('n_pairs')

# experiments.compare's default entries: GradMem, RMT x1 with the same memory, full context.
COMPARE = ('gradmem', common.RMT_COMPARE, 'full_context')


def base_config() -> ml_collections.ConfigDict:
  """The CPU preset (the default): kv_retrieval's CPU model, optimiser and runner settings; the
  lines below state what text reconstruction changes."""
  c = kv_retrieval.base_config()
  c.model.hf_checkpoint = ''          # a local Hugging Face checkpoint directory (architecture+weights)
  c.model.max_positions = 256         # memory + a span of <= 64 tokens + its reconstruction
  c.memory.num_memory = 2             # m = 2 memory vectors for a span of up to 64 tokens
  c.memory.K = 1                      # one WRITE step
  c.memory.inner_lr = 1.0             # as kv_retrieval's CPU preset
  # TextRecTaskConfig's defaults (gradmem_jax/data/textrec_task.py): spans of 8-64 word tokens of
  # the bAbI QA1-QA5 training stories, empty prompt; at most 1,000 held-out spans are scored.
  c.data = common.task_section('textrec', source='babi', babi_dir=SHARED_BABI,
                               squad_path=SHARED_SQUAD, n_val=1000)
  c.optim.batch_size = 32             # global batch
  c.optim.micro_batch_size = -1       # cache-sized chunks on CPU, the whole batch elsewhere
  c.train.max_steps = 3000
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.eval.batch_size = 250
  c.eval.evaluators = ('teacher_forced',)  # + 'generate': the greedily generated span (gen_em)
  return c


def cpu(c):
  """Default: bAbI stories, word tokenizer, 2x64 Llama from scratch, m=2, K=1."""
  del c  # base_config is the CPU preset


def tiny(c):
  """Seconds-long smoke runs (tests)."""
  common.tiny_model(c, num_memory=1)
  c.data.update(babi_tasks=(1,), n_val=16, max_len=16)
  c.optim.micro_batch_size = 0
  c.train.update(max_steps=4, eval_every=2, checkpoint_every=2, log_every_s=0.0)


def m1(c):
  """One memory vector."""
  c.memory.num_memory = 1


def squad(c):
  """SQuAD v1.1 development paragraphs, byte tokenizer (8-64 bytes per span)."""
  c.data.update(source='squad', tokenizer='bytes')


def mixed(c):
  """SQuAD paragraphs and bAbI stories, byte tokenizer."""
  c.data.update(source='squad+babi', tokenizer='bytes')


def gpt2(c):
  """Pretrained GPT-2 (give --config.model.hf_checkpoint=DIR) with its own tokenizer on SQuAD and
  bAbI text: the bAbI recipe of configs/babi.py's gpt2 preset with m=2."""
  c.model = ml_collections.ConfigDict(dict(
      kind='gpt2', hf_checkpoint=c.model.hf_checkpoint, vocab_size=0, dtype='bfloat16',
      param_dtype='float32', remat='none', embd_dropout=0.1, attn_dropout=0.1,
      resid_dropout=0.1))
  c.data.update(source='squad+babi', tokenizer='model')
  c.memory.update(num_memory=2, inner_lr=0.4, mem_proj='proj')
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, micro_batch_size=-1)
  c.train.update(max_steps=100_000, eval_every=1000, checkpoint_every=1000)


PRESETS = {'cpu': cpu, 'tiny': tiny, 'm1': m1, 'squad': squad, 'mixed': mixed, 'gpt2': gpt2,
           **common.METHOD_PRESETS}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.build(arg, base_config(), PRESETS, ALIASES)
