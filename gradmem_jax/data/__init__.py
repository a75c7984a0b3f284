"""Tasks. Each one gives the runner the same interface: `vocab_size`, `pad_id`, `ignore_ids`,
`stop_ids`, `tokenizer`, `context_len`, `max_new_tokens`, `summary`, `validation_set()`,
`collate()`, `train_batches()`, `eval_batches()` and `render()`.

- `kv`: associative key-value retrieval, generated (gradmem_jax/data/kv.py).
- `squad`: short SQuAD from a SQuAD JSON file on disk (gradmem_jax/data/squad.py).
"""
from __future__ import annotations

import dataclasses

from gradmem_jax.data.kv import KVTask, KVTaskConfig
from gradmem_jax.data.squad import SquadTask, SquadTaskConfig

TASKS = {'kv': (KVTaskConfig, KVTask), 'squad': (SquadTaskConfig, SquadTask)}


def task_config(data_cfg):
  """The validated task config dataclass of a `config.data` section (reads no files)."""
  data = dict(data_cfg)
  name = data.pop('task', 'kv')
  if name not in TASKS:
    raise ValueError(f'data.task={name!r} is not known; allowed: {sorted(TASKS)}')
  cls = TASKS[name][0]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise ValueError(f'data.{unknown[0]} is not a {name} task option; allowed: {sorted(fields)}')
  cfg = cls(**data)
  cfg.validate()
  return cfg


def build_task(data_cfg):
  cfg = task_config(data_cfg)
  name = dict(data_cfg).get('task', 'kv')
  return TASKS[name][1](cfg)


__all__ = ['TASKS', 'task_config', 'build_task', 'KVTask', 'KVTaskConfig', 'SquadTask',
           'SquadTaskConfig']
