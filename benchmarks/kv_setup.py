"""What the benchmarks build before they compile: the paper KV model's config as they run it, and
an experiment with its initial state and first training batch (train_step.py, memory_plan.py,
compile_time.py). No flags here, so any of those scripts can import it."""
from __future__ import annotations


def paper_kv_config(*, n_pairs: int, K: int, mode: str, batch: int, micro: int,
                    overrides: str = '', remat: str = 'none', impl: str = ''):
  """configs/kv_retrieval.py:paper_n16 at these pairs, K, gradient mode, batch and micro-batch
  (-1: the library's rule for the backend, 0: the whole batch), plus `overrides`; inner-step remat
  and implementation set on the result (impl '' keeps the config's)."""
  from configs import kv_retrieval
  config = kv_retrieval.get_config(
      f'paper_n16,n_pairs={n_pairs},K={K},grad_mode={mode},batch_size={batch},'
      f'optim.micro_batch_size={micro}' + (f',{overrides}' if overrides else ''))
  config.memory.inner_remat = remat
  if impl:
    config.memory.inner_impl = impl
  return config


def experiment_state_batch(config, batch_size: int = 0):
  """(experiment, initial train state from PRNGKey(0), the first training batch of `batch_size`
  (0: the config's batch size) as device arrays): the same inputs every run."""
  import jax
  import jax.numpy as jnp
  from gradmem_jax.training import build_experiment, init_state
  exp = build_experiment(config)
  state = init_state(exp, jax.random.PRNGKey(0))
  local = next(exp.task.train_batches(batch_size or exp.config.optim.batch_size))[1]
  return exp, state, {k: jnp.asarray(v) for k, v in local.items()}
