r"""Short SQuAD (SPEC §3.3): WRITE the answer sentence(s) into memory, answer the question from it.

  python -m experiments.short_squad --config=configs/short_squad.py --workdir=/tmp/squad_cpu
  python -m experiments.short_squad --config=configs/short_squad.py:gpt2,K=5 \
      --config.model.hf_checkpoint=/path/to/gpt2 --workdir=/tmp/squad_gpt2_k5

The data is a SQuAD JSON file on disk (default: the v1.1 development set shipped beside this
checkout in ../shared/data/squad), split into train/validation by article. Presets: cpu (default: a
small byte-level model from scratch, a pipeline check rather than a result), gpt2 (pretrained GPT-2
from a local Hugging Face directory, its tokenizer, m=32, the paper's recipe), rmt, full_context.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections

from configs import kv_retrieval
from gradmem_jax import config_lib
from gradmem_jax.models import GPT2Config

SHARED_SQUAD = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                             'shared', 'data', 'squad', 'dev-v1.1.json.gz'))

ALIASES = dict(kv_retrieval.ALIASES, path='data.path', tokenizer='data.tokenizer',
               hf_checkpoint='model.hf_checkpoint')
ALIASES.pop('n_pairs')


def base_config() -> ml_collections.ConfigDict:
  c = kv_retrieval.base_config()
  c.model.hf_checkpoint = ''          # a local Hugging Face checkpoint directory (architecture+weights)
  c.model.max_positions = 2048
  c.memory.num_memory = 32            # SPEC §3.3: m = 32
  c.memory.K = 1
  c.data = ml_collections.ConfigDict()
  c.data.task = 'squad'
  c.data.path = SHARED_SQUAD          # SQuAD JSON (.json / .json.gz)
  c.data.tokenizer = 'bytes'          # bytes | a local tokenizer directory | model (= model.hf_checkpoint)
  c.data.context = 'sentence'         # sentence (short SQuAD) | paragraph
  c.data.val_fraction = 0.1           # share of articles held out
  c.data.split_seed = 0
  c.data.seed = 0
  c.data.context_len = 0              # 0: fit the longest context (nothing is truncated)
  c.data.qa_len = 0
  c.data.n_val = 0                    # 0: every held-out question
  c.data.bucket = True                # pad each batch to the next power of two
  c.data.length_window = 1024         # batches of similar context lengths (0: plain shuffling)
  c.data.length_block = 64
  c.data.question_prefix = 'Question: '
  c.data.answer_prefix = '\nAnswer:'
  c.optim.batch_size = 16
  c.optim.micro_batch_size = -1       # chunks of 8 on CPU, the whole batch on accelerators
  c.train.max_steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.eval.batch_size = 128
  return c


def cpu(c):
  """Default: a byte-level 2-layer model from scratch; checks the pipeline on a CPU in minutes."""
  del c


def gpt2(c):
  """Pretrained GPT-2 (give --config.model.hf_checkpoint=DIR) with its own tokenizer; SPEC §7."""
  hf_checkpoint = c.model.hf_checkpoint
  fields = {f.name: f.default for f in dataclasses.fields(GPT2Config)}  # GPT-2 small
  c.model = ml_collections.ConfigDict(dict(kind='gpt2', hf_checkpoint=hf_checkpoint, **fields))
  c.model.vocab_size = 0            # from the checkpoint / tokenizer
  c.model.dtype = 'bfloat16'
  c.data.tokenizer = 'model'
  c.memory.num_memory = 32
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, micro_batch_size=-1)
  c.train.update(max_steps=100_000, eval_every=1000, checkpoint_every=1000)


def rmt(c):
  c.memory.method = 'rmt'
  c.memory.K = 1


def full_context(c):
  c.memory.method = 'full_context'


PRESETS = {'cpu': cpu, 'gpt2': gpt2, 'rmt': rmt, 'full_context': full_context}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = config_lib.parse_arg(arg, base_config(), PRESETS, ALIASES)
  config_lib.validate_config(config)
  return config
