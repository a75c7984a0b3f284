"""What the experiment config files share: method presets and the model section."""
from __future__ import annotations

import ml_collections

from gradmem_jax import config_lib
from gradmem_jax.data import TASKS
from gradmem_jax.models import FAMILIES


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


def rmt(c):
  """The forward-only writer (RMT x1) with the same memory size."""
  c.memory.method = 'rmt'
  c.memory.K = 1


def full_context(c):
  """The upper bound: the decoder reads the context directly."""
  c.memory.method = 'full_context'


def first_order(c):
  """GradMem without the second-order term (the paper's ablation)."""
  c.memory.grad_mode = 'first'


METHOD_PRESETS = {'rmt': rmt, 'full_context': full_context, 'first_order': first_order}
