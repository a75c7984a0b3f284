"""WRITE/READ methods behind one interface (`base.Method`), registered by name in `METHODS`, and
the outer objective (`objective`). Importing this package registers the built-in methods:
gradmem (gradmem.py), rmt (rmt.py), full_context (full_context.py).
"""
from gradmem_jax.memory import full_context, gradmem, losses, rmt
from gradmem_jax.memory.base import METHODS, Capabilities, Method, build_method
from gradmem_jax.memory.config import MemoryConfig, memory_config_from
from gradmem_jax.memory.full_context import FullContext
from gradmem_jax.memory.gradmem import GradMem
from gradmem_jax.memory.objective import eval_sums, forward, outer_loss, sample_weight, stat_sums
from gradmem_jax.memory.prefix import PrefixMemory
from gradmem_jax.memory.rmt import RMT

__all__ = ['METHODS', 'Capabilities', 'Method', 'build_method', 'GradMem', 'RMT', 'FullContext', 'PrefixMemory',
           'MemoryConfig', 'memory_config_from', 'forward', 'outer_loss', 'eval_sums',
           'sample_weight', 'stat_sums', 'losses']
