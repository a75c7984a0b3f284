"""What the experiment config files share: method presets and the model section."""
from __future__ import annotations

import ml_collections

from gradmem_jax import config_lib
from gradmem_jax.data import TASKS
from gradmem_jax.models.base import DEFAULT_KIND, FAMILIES


def model_section(kind: str, **changes) -> ml_collections.ConfigDict:
  """`config.model` for a family: its config dataclass's defaults plus `changes`."""
  c = config_lib.section(FAMILIES.get(kind).config_cls, **changes)
  c.kind = kind                     # the backbone family (llama | gpt2 | ...)
  return c


def task_section(name: str, **changes) -> ml_collections.ConfigDict:
  """`config.data` for a registered task: its config dataclass's defaults plus `changes`."""
  c = config_lib.section(TASKS.get(name).config_cls, **changes)
  c.task = name                     # the registered task (kv | squad | ...)
  return c


def family_defaults(kind: str) -> dict:
  """{field: default} of a backbone family's config class."""
  return config_lib.dataclass_defaults(FAMILIES.get(kind).config_cls)


def update_model(c, **fields) -> None:
  """Sets the size fields a preset names on whichever family `config.model` holds: those its
  config class has (a Mamba has no heads or MLP width; presets state sizes for every family).
  A field no family has is an error."""
  known = {f for kind in FAMILIES for f in family_defaults(kind)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'{unknown[0]!r} is a field of no backbone family')
  mine = family_defaults(c.model.get('kind', DEFAULT_KIND))
  c.model.update({k: v for k, v in fields.items() if k in mine})


def tiny_model(c, num_memory: int = 2):
  """The smoke-test size shared by every task's `tiny` preset: a 1-layer, 16-wide model, K=1,
  batch 8, a short warmup, and evaluation in batches of 8."""
  update_model(c, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
  c.memory.update(num_memory=num_memory, K=1)
  c.optim.update(batch_size=8, warmup_steps=2)
  c.eval.batch_size = 8


def build(arg, base: ml_collections.ConfigDict, presets, aliases) -> ml_collections.ConfigDict:
  """A config file's get_config: presets and overrides from `arg`, then validation."""
  config = config_lib.parse_arg(arg, base, presets, aliases)
  config_lib.validate_config(config)
  return config


# RMT x1 with the learned memory projection, for sweeps and each task's COMPARE list. Without it the
# 2-layer CPU model's forward writer collapses (the same memory for every context: 0% EM at 2 KV
# pairs after 12,000 steps); with it, it learns (benchmarks/results/claims_tune/rmt_depth.md).
RMT_X1 = {'method': 'rmt', 'K': 1, 'memory.mem_proj': 'proj'}  # as sweep-point overrides
RMT_COMPARE = 'rmt:' + ';'.join(f'{k}={v}' for k, v in RMT_X1.items() if k != 'method')


def rmt(c):
  """The forward-only writer (RMT x1) with the same memory size, and the learned memory projection
  it needs to learn at all on the small CPU models (see RMT_COMPARE)."""
  c.memory.method = 'rmt'
  c.memory.K = 1
  c.memory.mem_proj = 'proj'


def full_context(c):
  """The upper bound: the decoder reads the context directly."""
  c.memory.method = 'full_context'


def first_order(c):
  """GradMem without the second-order term (the paper's ablation)."""
  c.memory.grad_mode = 'first'


METHOD_PRESETS = {'rmt': rmt, 'full_context': full_context, 'first_order': first_order}


# Sizes of a transformer that a task or preset states and a Mamba has no use for.
TRANSFORMER_SIZES = ('intermediate_size', 'num_heads', 'num_kv_heads', 'head_dim', 'max_positions')


def mamba(c):
  """The backbone as a Mamba (models/mamba.py) of the same width and depth, vocabulary and dtypes,
  under whatever method the config runs. The paper's Mamba baseline is `mamba,full_context`: the
  context read through the recurrent state. Presets that size the model (tiny, paper_nN) may
  come before or after it; one that set anything else of the old model (paper_rope's RoPE, a
  checkpoint from smollm2) must not come before it: that is an error, never dropped. (Overrides
  apply after every preset, so a Mamba checkpoint can still be named with
  `model.hf_checkpoint=DIR`.)"""
  for f in ('pretrained', 'hf_checkpoint'):
    if c.model.get(f):
      raise ValueError(f'preset mamba builds a Mamba from scratch, but model.{f}='
                       f'{c.model[f]!r} names a checkpoint: drop one of them')
  keep = ('vocab_size', 'hidden_size', 'num_layers', 'dtype', 'param_dtype', 'remat',
          'scan_layers')
  had = dict(c.model)
  kind = had.get('kind', DEFAULT_KIND)
  defaults = family_defaults(kind)
  lost = [k for k, v in had.items() if k in defaults and k not in keep + TRANSFORMER_SIZES
          and (v or None) != (defaults[k] or None)]
  if lost:
    raise ValueError(f'preset mamba would drop {", ".join("model." + k for k in sorted(lost))}, '
                     f'set for the {kind} model by an earlier preset (a Mamba '
                     'has no such field): apply mamba first, or leave that preset out')
  c.model = model_section('mamba', **{k: had[k] for k in keep if k in had})
  if 'hf_checkpoint' in had:  # a task that can start from a local checkpoint keeps the field
    c.model.hf_checkpoint = ''


MODEL_PRESETS = {'mamba': mamba}
