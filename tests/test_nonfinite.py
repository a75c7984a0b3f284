"""Non-finite values (train.on_nonfinite): flags computed inside the jitted step and read every
step; 'stop' names the step, the quantity and the last good checkpoint and records the batch;
'skip' leaves the state unchanged; 'ignore' goes on; a non-finite state is never checkpointed."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kv_retrieval
from gradmem_jax.data.base import HostBatches
from gradmem_jax.training import abstract_state, build_experiment, init_state, make_train_step
from gradmem_jax.training import steps as steps_lib
from gradmem_jax.training import train as train_lib
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training.train import NonFiniteError, train_and_evaluate

BATCH = 8  # the tiny preset's batch


def _poison(monkeypatch, starts):
  """Training batches that start at these data indices get out-of-vocabulary context ids: the
  embedding lookup gives NaN, so the WRITE loss at inner step 0 is the first non-finite value."""
  orig = HostBatches.train_batches

  def patched(self, global_batch, start_index=0, *args, **kwargs):
    for index, batch in orig(self, global_batch, start_index, *args, **kwargs):
      if index - global_batch in starts:
        batch = dict(batch, context=np.full_like(batch['context'], 10 ** 6))
      yield index, batch

  monkeypatch.setattr(HostBatches, 'train_batches', patched)


def _leaves_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _checkpoints(workdir, config):
  """{step: params} of every kept resumable checkpoint."""
  abstract, _ = abstract_state(build_experiment(config))
  d = os.path.join(workdir, 'checkpoints')
  out = {}
  for s in sorted(int(x) for x in os.listdir(d) if x.isdigit()):
    out[s] = load_params(os.path.join(d, str(s)), abstract['params'])
  return out


def test_stop_names_step_quantity_and_checkpoint_and_saves_only_finite_states(tmp_path,
                                                                               monkeypatch):
  _poison(monkeypatch, {3 * BATCH})  # step 4 (the 4th update) sees the poisoned batch
  config = kv_retrieval.get_config('tiny,K=2,max_steps=6,train.eval_every=100')
  with pytest.raises(NonFiniteError) as e:
    train_and_evaluate(config, str(tmp_path))
  msg = str(e.value)
  ckdir = os.path.join(str(tmp_path.resolve()), 'checkpoints')
  assert 'non-finite values at step 4' in msg
  assert 'the WRITE loss at inner step k=0 (of K=2) went non-finite first' in msg
  assert f'last good checkpoint: {ckdir}/3 (step 3)' in msg
  assert 'training samples 24..31' in msg and 'debug_nans=True' in msg
  record = json.load(open(tmp_path / 'nonfinite_step_4.json'))
  assert record['first_nonfinite'] == 'write_loss[0]' and record['state_step'] == 3
  assert record['sample_indices'] == list(range(24, 32))
  assert (record['data_index_start'], record['data_index_end']) == (24, 32)
  # Only the good state was checkpointed: latest = step 3, finite, and it resumes at the bad batch.
  kept = _checkpoints(tmp_path, config)
  assert max(kept) == 3
  for params, meta in kept.values():
    assert _leaves_finite(params)
  assert kept[3][1]['data_index'] == 3 * BATCH  # a resume replays the bad step
  assert not (tmp_path / 'results.json').exists()


def test_stop_saves_the_last_good_state_between_checkpoints(tmp_path, monkeypatch):
  """The blow-up falls between two scheduled checkpoints: the state before it is saved."""
  _poison(monkeypatch, {4 * BATCH})  # step 5; scheduled checkpoints at 3 and 6
  config = kv_retrieval.get_config('tiny,max_steps=6,train.eval_every=100')
  with pytest.raises(NonFiniteError, match=r'step 5 .*checkpoints/4 \(step 4\)'):
    train_and_evaluate(config, str(tmp_path))
  kept = _checkpoints(tmp_path, config)
  assert sorted(kept) == [3, 4] and all(_leaves_finite(p) for p, _ in kept.values())
  assert kept[4][1]['data_index'] == 4 * BATCH


def test_overflowing_learning_rate_stops_with_finite_checkpoints(tmp_path):
  """lr=1e20: steps 1-2 are finite (warmup), step 3 overflows; nothing non-finite is saved."""
  config = kv_retrieval.get_config('tiny,lr=1e20,train.checkpoint_every=1,train.eval_every=100')
  with pytest.raises(NonFiniteError, match=r'at step 3 .*the outer loss went non-finite first'):
    train_and_evaluate(config, str(tmp_path))
  kept = _checkpoints(tmp_path, config)
  assert max(kept) == 2 and all(_leaves_finite(p) for p, _ in kept.values())


def test_skip_leaves_state_unchanged_counts_and_goes_on(tmp_path, monkeypatch):
  _poison(monkeypatch, {1 * BATCH, 2 * BATCH})  # two bad batches in a row, then good ones
  config = kv_retrieval.get_config('tiny,max_steps=4,train.on_nonfinite=skip,train.max_skips=3')
  r = train_and_evaluate(config, str(tmp_path))
  assert r['steps'] == 4 and r['skipped_steps'] == 2
  kept = _checkpoints(tmp_path, config)
  assert kept[4][1]['data_index'] == 6 * BATCH  # 4 updates + 2 skipped batches consumed
  assert kept[4][1]['skipped_steps'] == 2 and _leaves_finite(kept[4][0])


def test_skip_stops_after_max_skips_in_a_row(tmp_path, monkeypatch):
  _poison(monkeypatch, {2 * BATCH, 3 * BATCH, 4 * BATCH})
  config = kv_retrieval.get_config('tiny,max_steps=6,train.on_nonfinite=skip,train.max_skips=2,train.eval_every=100')
  with pytest.raises(NonFiniteError, match=r"2 non-finite steps in a row \(train.max_skips=2\)"):
    train_and_evaluate(config, str(tmp_path))
  kept = _checkpoints(tmp_path, config)
  assert max(kept) == 2 and all(_leaves_finite(p) for p, _ in kept.values())
  assert kept[2][1]['data_index'] == 3 * BATCH  # resumes at the last skipped batch


def test_guarded_step_returns_its_input_state_bit_for_bit():
  """on_nonfinite stop/skip: a non-finite step changes nothing (step, params, optimizer state);
  unguarded ('ignore') it does."""
  config = kv_retrieval.get_config('tiny,K=2')
  exp = build_experiment(config)
  state = init_state(exp, jax.random.PRNGKey(0))
  good = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(BATCH))[1].items()}
  bad = dict(good, context=jnp.full_like(good['context'], 10 ** 6))
  rng = jax.random.PRNGKey(1)
  guarded = jax.jit(make_train_step(exp, guard=True))
  state, _ = guarded(state, good, rng)  # a real optimizer state (step 1, nonzero moments)
  before = jax.tree_util.tree_map(np.asarray, state)
  after, m = guarded(state, bad, rng)
  assert not np.asarray(m['finite']).all()
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(a, np.asarray(b))
  after2, _ = jax.jit(make_train_step(exp, guard=False))(state, bad, rng)
  assert int(after2['step']) == 2 and not _leaves_finite(after2['params'])


def test_flags_are_in_computation_order_with_per_inner_step_entries():
  sums = {'inner/write_loss': jnp.array([1.0, jnp.inf, jnp.nan]),
          'inner/grad_norm': jnp.array([1.0, 2.0, jnp.nan]), 'inner/mem_norm': jnp.float32(1)}
  flags, names = steps_lib.finite_flags(jnp.float32(1.0), jnp.float32(jnp.nan), sums,
                                        {'p': jnp.ones(3)})
  assert names == ['write_loss[0]', 'inner_grad_norm[0]', 'write_loss[1]', 'inner_grad_norm[1]',
                   'write_loss[2]', 'inner_grad_norm[2]', 'mem_norm', 'loss', 'grad_norm',
                   'state']
  assert np.asarray(flags).tolist() == [True, True, False, True, False, False, True, True, False,
                                        True]
  assert train_lib._describe_flag('write_loss[1]', 3) == (
      'the WRITE loss at inner step k=1 (of K=3)')


def test_ignore_goes_on_but_never_checkpoints_a_nonfinite_state(tmp_path):
  config = kv_retrieval.get_config('tiny,lr=1e20,train.on_nonfinite=ignore,train.checkpoint_every=1')
  r = train_and_evaluate(config, str(tmp_path))
  assert r['steps'] == 6
  kept = _checkpoints(tmp_path, config)
  assert sorted(kept) == [1, 2] and all(_leaves_finite(p) for p, _ in kept.values())


def test_unknown_policy_is_refused(tmp_path):
  config = kv_retrieval.get_config('tiny,train.on_nonfinite=warn')
  with pytest.raises(ValueError, match='train.on_nonfinite'):
    train_and_evaluate(config, str(tmp_path))
