"""Tasks behind one interface (`base.Task`), registered by name in `TASKS` (`data.task`), plus
the readers and tokenizers they use. Importing this package registers the built-in tasks:
kv (kv.py, generated key-value retrieval) and squad (squad.py, short SQuAD from a JSON file).
"""
from gradmem_jax.data import kv, squad
from gradmem_jax.data import babi_task, textrec_task
from gradmem_jax.data.base import (BATCH_SPEC, TASKS, HostBatches, Sample, Task, build_task,
                                   collate, task_config)
from gradmem_jax.data.kv import KVTask, KVTaskConfig
from gradmem_jax.data.squad import SquadTask, SquadTaskConfig

__all__ = ['TASKS', 'Task', 'BATCH_SPEC', 'HostBatches', 'Sample', 'collate', 'task_config',
           'build_task', 'KVTask', 'KVTaskConfig', 'SquadTask', 'SquadTaskConfig']
