r"""Associative key-value retrieval (SPEC §3.1, §6, §7): GradMem and baselines.

Launch (the default is the small CPU preset that learns in minutes):

  python -m experiments.kv_retrieval --config=configs/kv_retrieval.py
  python -m experiments.kv_retrieval --config=configs/kv_retrieval.py:paper_n16,K=2 \
      --workdir=/tmp/kv_n16_k2
  python -m experiments.kv_retrieval --config=configs/kv_retrieval.py:paper_n32,K=5 \
      --config.train.init_from=/tmp/kv_n16_k5 --workdir=/tmp/kv_n32_k5

Presets (bare words after the colon, applied in order): cpu (default), tiny, paper_n{4..96},
rmt, full_context, first_order, mamba (the backbone as a Mamba of the same size; the paper's
Mamba baseline is `mamba,full_context`). Overrides: key=value with a dotted path or one of ALIASES.
"""
from __future__ import annotations

import ml_collections

from configs import common
from gradmem_jax import config_lib
from gradmem_jax.memory import MemoryConfig

ALIASES = {
    'n_pairs': 'data.n_pairs',
    'K': 'memory.K',
    'inner_lr': 'memory.inner_lr',
    'grad_mode': 'memory.grad_mode',
    'method': 'memory.method',
    'm': 'memory.num_memory',
    'num_memory': 'memory.num_memory',
    'inner_optimizer': 'memory.inner_optimizer',
    'lr': 'optim.lr',
    'batch_size': 'optim.batch_size',
    'max_steps': 'train.max_steps',
    'steps': 'train.max_steps',
    'seed': 'seed',
}

PAPER_N = (4, 8, 16, 32, 64, 96)
# experiments.compare's default entries: GradMem, RMT x1 with the same memory, full context.
COMPARE = ('gradmem', common.RMT_COMPARE, 'full_context')


def base_config() -> ml_collections.ConfigDict:
  """The CPU preset (the default). Model and memory fields start from the library's defaults
  (LlamaConfig, MemoryConfig: the paper's KV model and WRITE settings, see WORKSPACE.md's config
  reference); the lines below state what the CPU preset changes."""
  c = ml_collections.ConfigDict()
  c.seed = 0                        # parameter init and dropout; data seeds are in config.data
  # A 2-layer, 64-wide Llama that learns 2 pairs in minutes on 2 cores; vocab from the task.
  c.model = common.model_section('llama', vocab_size=0, hidden_size=64, intermediate_size=256,
                                 num_layers=2)
  # The paper uses inner_lr 0.04 (the default); 1.0 trains the small CPU model faster.
  c.memory = config_lib.section(MemoryConfig, inner_lr=1.0)

  c.data = common.task_section('kv')  # KVTaskConfig's defaults: 2 pairs, 1,000 validation samples

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3                 # AdamW peak learning rate
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0           # global-norm clip (0: off)
  c.optim.warmup_steps = 200        # linear warmup
  c.optim.schedule = 'constant'     # after warmup: constant | cosine (to 0 at max_steps)
  c.optim.batch_size = 32           # global batch (all hosts)
  c.optim.micro_batch_size = 0      # gradient accumulation chunks (0: whole batch; -1: auto = at
                                    # most 8 samples and 1,024 WRITE tokens per device on CPU,
                                    # whole batch on GPU/TPU)

  c.train = ml_collections.ConfigDict()
  c.train.max_steps = 4000
  c.train.eval_every = 250          # steps between validation runs (and best-checkpoint checks)
  c.train.checkpoint_every = 250    # steps between resumable checkpoints
  c.train.keep_checkpoints = 2      # latest resumable checkpoints kept
  c.train.target_em = 0.0           # stop when validation EM reaches this (0: off)
  c.train.init_from = ''            # workdir (or checkpoint dir) to take initial params from
  c.train.init_from_part = ''       # '' = all of them; 'backbone' = only the backbone (the run
                                    # may be another method's, e.g. full context)
  c.train.log_every_s = 5.0         # console progress period
  c.train.max_minutes = 0.0         # stop (with a checkpoint) after this much wall time (0: off)
  c.train.on_nonfinite = 'stop'     # a non-finite loss/gradient/WRITE step: stop | skip | ignore
  c.train.max_skips = 10            # on_nonfinite='skip': stop after this many skips in a row
  c.train.debug_nans = False        # jax_debug_nans (replay a non-finite step; slow)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 250           # validation batch (global)
  c.eval.K = -1                     # WRITE steps at evaluation (-1: memory.K)
  c.eval.evaluators = ('teacher_forced',)  # + 'generate': greedy answers scored by the task

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                  # data-parallel devices (-1: all)
  c.mesh.fsdp = 1                   # parameter/optimizer-state sharding devices
  c.distributed = False             # call jax.distributed.initialize() (multi-host)
  return c


def cpu(c):
  """Default: a small model that reaches >= 90% EM on 2 pairs on a 2-core CPU."""
  del c  # base_config is the CPU preset


def tiny(c):
  """Seconds-long smoke runs (tests)."""
  common.tiny_model(c, num_memory=2)
  c.data.update(n_pairs=2, n_val=16, train_size=10_000)
  c.train.update(max_steps=6, eval_every=3, checkpoint_every=3, log_every_s=0.0)
  c.eval.batch_size = 8


def paper(c, n_pairs: int):
  """The paper's KV model and recipe (SPEC §4, §7); K from the override (default 2)."""
  common.update_model(c, hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4,
                      num_kv_heads=4)
  c.memory.update(num_memory=8, inner_lr=0.04, inner_loss_weight=0.5, mem_proj='none',
                  write_head=True)
  c.data.update(n_pairs=n_pairs, n_val=5000)
  c.optim.update(lr=1e-4, warmup_steps=10_000, batch_size=64, clip_norm=1.0, weight_decay=0.0,
                 micro_batch_size=-1)
  c.train.update(max_steps=200_000, eval_every=500, checkpoint_every=500, target_em=1.0)
  c.eval.batch_size = 500


def paper_rope(c):
  """RoPE as the authors' runs inherited it (theta 5e5, Llama-3 frequency scaling)."""
  c.model.rope_theta = 500000.0
  c.model.rope_scaling = ml_collections.ConfigDict(dict(
      rope_type='llama3', factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=8192))


PRESETS = {'cpu': cpu, 'tiny': tiny, 'paper_rope': paper_rope, **common.METHOD_PRESETS,
           **common.MODEL_PRESETS}
PRESETS.update({f'paper_n{n}': (lambda c, n=n: paper(c, n)) for n in PAPER_N})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.build(arg, base_config(), PRESETS, ALIASES)
