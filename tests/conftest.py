"""Shared fixtures: tiny models and batches for fast CPU tests."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# One persistent XLA compilation cache for the whole test session: the xdist workers and the
# training subprocesses that many tests start (they inherit the environment) compile the same tiny
# programs again and again; a tiny KV run takes 18 s cold and 7 s with the cache warm. A fresh
# directory per session (set here, in the controller, before the workers start), unless the user
# set one; jax reads both variables when it is imported.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='gradmem-tests-xla-cache-')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  # removed when the process that made it (the controller) exits, after the workers
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

# The suite compiles hundreds of tiny programs and runs most of them a few times, so compiling
# costs more than running. Three XLA:CPU settings make compiling cheaper; none changes the program
# jax hands to XLA, only how XLA compiles it for the CPU:
# - backend optimisation level 0 (LLVM's optimisation passes off): two compile-bound tests
#   (test_grad_modes, check_grads_adam) took 23 s instead of 39 s; the suite 459 s instead of 750 s.
# - XLA's older elemental emitter for fused elementwise loops instead of its MLIR fusion emitters
#   (--xla_cpu_use_fusion_emitters=false): one second-order test program (tiny Llama, K=2) compiled
#   in 3.3-3.9 s instead of 4.5-5.1 s, and test_grad_modes with test_batched_inner_loss_matches_vmap
#   took 93 s instead of 140 s (2026-11-28). This one also moves some of XLA's fusion decisions
#   (that program compiled to 14,117 lines of HLO instead of 14,242), so float rounding may differ.
#   jaxlib 0.12.0.1 no longer knows the flag (its CPU backend has only the fusion emitters): there
#   the probe below drops it and keeps level 0 (checked with Python 3.12.1).
# - one LLVM module per program instead of several compiled on parallel threads
#   (--xla_cpu_parallel_codegen_split_count=1): the suite's programs are tiny and its two xdist
#   workers already fill both cores, so the split only adds work. Four compile-bound tests of
#   test_gradmem.py (11 cases, one process, two rounds alternated) took 169 / 173 s of CPU instead
#   of 181 / 194 s (2026-11-28). It changes how XLA's machine code is compiled, not the program.
# The whole suite passes with them, its bit-identity checks included (with all three: 436 passed
# in 641 s, 2026-11-28). Appended to the user's
# XLA_FLAGS (the subprocesses inherit it); GRADMEM_TEST_XLA_OPT=1 keeps XLA's defaults. XLA aborts a
# process on a flag it does not know, so each is asked first, in a subprocess, and a jaxlib that
# has dropped one keeps the others.
_FAST_COMPILE = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false',
                 '--xla_cpu_parallel_codegen_split_count=1')


def _xla_accepts(flags: str) -> bool:
  probe = 'import jax, jax.numpy as jnp; jnp.ones(2).sum().block_until_ready()'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  try:
    return subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True,
                          timeout=300).returncode == 0
  except (subprocess.TimeoutExpired, OSError):  # no verdict: keep XLA's default
    return False


# Probed once, in the controller: the xdist workers inherit its environment and the marker.
if (os.environ.get('GRADMEM_TEST_XLA_OPT') != '1'
    and os.environ.get('GRADMEM_TEST_XLA_PROBED') != '1'):
  os.environ['GRADMEM_TEST_XLA_PROBED'] = '1'
  _user = os.environ.get('XLA_FLAGS', '')
  # a setting the user chose (any value) is kept; all at once first, one by one if refused
  _wanted = [f for f in _FAST_COMPILE if f.split('=')[0].lstrip('-') not in _user]
  _joined = (_user + ' ' + ' '.join(_wanted)).strip()
  if _wanted and _xla_accepts(_joined):
    os.environ['XLA_FLAGS'] = _joined
  elif len(_wanted) > 1:
    for _flag in _wanted:
      _more = (os.environ.get('XLA_FLAGS', '') + ' ' + _flag).strip()
      if _xla_accepts(_more):
        os.environ['XLA_FLAGS'] = _more

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmem_jax.memory import MemoryConfig, build_method
from gradmem_jax.models import backbone_from_config


@pytest.fixture(autouse=True)
def _reap():
  """Kills the subprocesses a test started with tests.subprocs.track that are still alive when it
  ends (a hung or abandoned run must not load the later tests)."""
  yield
  from tests import subprocs
  subprocs.reap()


def forbid_random_init(monkeypatch):
  """Makes the runner's random initialisation an error: parameters that come from elsewhere (a
  pretrained backbone, init_from) are not first drawn at random and thrown away (for SmolLM2's 30
  layers that init program took 53 s to compile on 2 CPU cores)."""
  from gradmem_jax.training import train as train_module

  def boom(*a, **k):
    raise AssertionError('init_state (random parameters) called although they are loaded')

  monkeypatch.setattr(train_module, 'init_state', boom)


TINY_LLAMA = dict(kind='llama', vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=2,
                  num_heads=2, num_kv_heads=1, max_positions=64)
TINY_GPT2 = dict(kind='gpt2', vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=2,
                 num_heads=2, max_positions=64)
TINY_MAMBA = dict(kind='mamba', vocab_size=23, hidden_size=16, num_layers=2, state_size=4)
TINY = {'llama': TINY_LLAMA, 'gpt2': TINY_GPT2, 'mamba': TINY_MAMBA}


def tiny_backbone(dtype: str = 'float32', **overrides):
  base = TINY[overrides.get('kind', 'llama')]
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
