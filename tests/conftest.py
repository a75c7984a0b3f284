"""Shared fixtures: tiny models and batches for fast CPU tests."""
from __future__ import annotations

import os
import tempfile

# One persistent XLA compilation cache for the whole test session: the xdist workers and the
# training subprocesses that many tests start (they inherit the environment) compile the same tiny
# programs again and again; a tiny KV run takes 18 s cold and 7 s with the cache warm. A fresh
# directory per session (set here, in the controller, before the workers start), unless the user
# set one; jax reads both variables when it is imported.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='gradmem-tests-xla-cache-')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmem_jax.memory import MemoryConfig, build_method
from gradmem_jax.models import backbone_from_config

TINY_LLAMA = dict(kind='llama', vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=2,
                  num_heads=2, num_kv_heads=1, max_positions=64)
TINY_GPT2 = dict(kind='gpt2', vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=2,
                 num_heads=2, max_positions=64)


def tiny_backbone(dtype: str = 'float32', **overrides):
  base = TINY_GPT2 if overrides.get('kind') == 'gpt2' else TINY_LLAMA
  cfg = dict(base, dtype=dtype, param_dtype=dtype)
  cfg.update(overrides)
  return backbone_from_config(cfg)


def tiny_method(dtype: str = 'float32', model=None, **mem):
  mem.setdefault('num_memory', 2)
  bb = tiny_backbone(dtype, **(model or {}))
  method = build_method(bb, MemoryConfig(**mem))
  params = method.init_params(jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
  return method, params


def random_batch(b=3, s=7, q=5, vocab=23, seed=0, pad_last=True):
  rng = np.random.default_rng(seed)
  context = rng.integers(4, vocab, (b, s)).astype(np.int32)
  mask = np.ones((b, s), np.int32)
  if pad_last and b > 1:
    mask[1, s - 2:] = 0  # sample 1 is shorter
    context[1, s - 2:] = 0
  qa = rng.integers(4, vocab, (b, q)).astype(np.int32)
  target = np.zeros((b, q), np.int32)
  target[:, 2:] = 1
  return {'context': jnp.asarray(context), 'context_mask': jnp.asarray(mask),
          'qa': jnp.asarray(qa), 'target_mask': jnp.asarray(target)}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
