"""Reliability: damaged checkpoints and a damaged metrics log (damaged SQuAD files: test_squad.py).

Every damage here is one a researcher meets: a copy or a save that stopped half way (a file
truncated or missing), a full disk (an empty file), bytes garbled on the way. Each must give a
clear message naming the path and the reason, a resume must fall back to the newest good
checkpoint, and a checkpoint of another model must be named as such (never as damage, and never
skipped for an older one).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradmem_jax.training.checkpoint import (Checkpointer, DamagedCheckpointError,
                                             DamagedCheckpointWarning,
                                             IncompatibleCheckpointError, load_params)
from gradmem_jax.training.logging_utils import MetricsWriter

# Orbax/tensorstore reads of damaged files leave asyncio callbacks that fire after their event loop
# closed ("RuntimeError: Event loop is closed", reported as unraisable at garbage collection).
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

# ------------------------------------------------------------------------------------------------
# Checkpoints.


def _params(scale: float, w_shape=(4, 3)):
  return {'backbone': {'w': scale * jnp.ones(w_shape), 'b': scale * jnp.arange(3.0)},
          'memory': {'mem_init': scale * jnp.ones((2, 3))}}


def _state(step: int, w_shape=(4, 3)):
  params = _params(float(step), w_shape)
  return {'step': jnp.int32(step), 'params': params, 'opt_state': optax.adamw(1e-3).init(params)}


def _abstract(state):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _write_run(workdir, steps=(1, 2, 3), keep=3, w_shape=(4, 3)):
  ck = Checkpointer(str(workdir), keep)
  for s in steps:
    ck.save(s, _state(s, w_shape), {'data_index': 10 * s})
  ck.save_best(steps[-1], _params(float(steps[-1]), w_shape), {'step': steps[-1]})
  ck.close()


def _garble(path):
  data = bytearray(open(path, 'rb').read())
  for i in range(0, len(data), 5):
    data[i] ^= 0xA5
  open(path, 'wb').write(bytes(data))


def _truncate(path):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


def _data_files(step_dir, item='state'):
  files = [p for p in glob.glob(os.path.join(step_dir, item, '**', '*'), recursive=True)
           if os.path.isfile(p) and os.sep + 'd' + os.sep in p]
  assert files, 'expected orbax data files under <item>/d/'
  return files


def _rm(path):
  shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


DAMAGE = {
    # what a stopped copy or save leaves
    'commit_marker_missing': lambda d: _rm(os.path.join(d, 'commit_success.txt')),
    'step_metadata_missing': lambda d: _rm(os.path.join(d, '_CHECKPOINT_METADATA')),
    'state_item_missing': lambda d: _rm(os.path.join(d, 'state')),
    'meta_item_missing': lambda d: _rm(os.path.join(d, 'meta')),
    'tree_metadata_missing': lambda d: _rm(os.path.join(d, 'state', '_METADATA')),
    'data_files_missing': lambda d: [_rm(p) for p in _data_files(d)],
    'data_truncated': lambda d: [_truncate(p) for p in _data_files(d)],
    'step_dir_emptied': lambda d: (_rm(d), os.makedirs(d)),
    # a full disk: files created, nothing written
    'every_file_empty': lambda d: [open(p, 'w').close() for p in glob.glob(
        os.path.join(d, '**', '*'), recursive=True) if os.path.isfile(p)],
    # garbled bytes
    'step_metadata_garbled': lambda d: _garble(os.path.join(d, '_CHECKPOINT_METADATA')),
    'tree_metadata_garbled': lambda d: _garble(os.path.join(d, 'state', '_METADATA')),
    'meta_garbled': lambda d: _garble(os.path.join(d, 'meta', 'metadata')),
    'meta_not_an_object': lambda d: open(os.path.join(d, 'meta', 'metadata'), 'w').write('[1, 2]'),
    'data_garbled': lambda d: [_garble(p) for p in _data_files(d)],
    'manifest_garbled': lambda d: _garble(os.path.join(d, 'state', 'manifest.ocdbt')),
    'step_is_a_file': lambda d: (_rm(d), open(d, 'w').write('garbage')),
}


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
  """A workdir with checkpoints at steps 1, 2, 3 (copied by each test that damages it)."""
  workdir = tmp_path_factory.mktemp('run')
  _write_run(workdir)
  return workdir


def _copy(saved_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(saved_run, workdir)
  return workdir


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_previous_good_one(saved_run, tmp_path, damage):
  workdir = _copy(saved_run, tmp_path)
  bad = str(workdir / 'checkpoints' / '3')
  DAMAGE[damage](bad)
  ck = Checkpointer(str(workdir), 3)
  abstract = _abstract(_state(0))
  with pytest.warns(DamagedCheckpointWarning) as record:
    state, meta = ck.restore_latest(abstract)
  # pop: the recorder also catches other threads' warnings (a compilation-cache read, say)
  msg = str(record.pop(DamagedCheckpointWarning).message)
  # The warning names the damaged and the good checkpoint (paths and steps) and says why.
  assert bad in msg and str(workdir / 'checkpoints' / '2') in msg and 'damaged' in msg
  assert 'step 3' in msg and 'step 2' in msg
  assert 'does not match' not in msg  # damage is not blamed on the model
  assert int(state['step']) == 2 and meta == {'data_index': 20}
  np.testing.assert_array_equal(state['params']['backbone']['w'], 2.0 * np.ones((4, 3)))
  np.testing.assert_array_equal(state['opt_state'][0].count, 0)
  # The damaged checkpoint is kept for a look, out of the way, and step 3 can be saved again.
  assert not os.path.exists(bad) and os.path.exists(workdir / 'checkpoints.damaged' / '3')
  assert ck.latest_step() == 2
  ck.save(3, _state(30), {'data_index': 300})
  ck.close()
  ck = Checkpointer(str(workdir), 3)
  with warnings.catch_warnings():
    warnings.simplefilter('error', DamagedCheckpointWarning)
    state, meta = ck.restore_latest(_abstract(_state(0)))
  ck.close()
  assert int(state['step']) == 30 and meta == {'data_index': 300}


def test_two_damaged_checkpoints_fall_back_to_the_oldest_good_one(saved_run, tmp_path):
  workdir = _copy(saved_run, tmp_path)
  DAMAGE['data_truncated'](str(workdir / 'checkpoints' / '3'))
  DAMAGE['commit_marker_missing'](str(workdir / 'checkpoints' / '2'))
  ck = Checkpointer(str(workdir), 3)
  abstract = _abstract(_state(0))
  with pytest.warns(DamagedCheckpointWarning, match='step 3') as record:
    state, _ = ck.restore_latest(abstract)
  ck.close()
  msg = str(record.pop(DamagedCheckpointWarning).message)
  assert 'step 2' in msg and 'commit_success.txt' in msg and 'step 1' in msg
  assert int(state['step']) == 1


def test_every_checkpoint_damaged_is_a_clear_error_not_a_fresh_start(saved_run, tmp_path):
  workdir = _copy(saved_run, tmp_path)
  DAMAGE['data_truncated'](str(workdir / 'checkpoints' / '3'))
  DAMAGE['tree_metadata_missing'](str(workdir / 'checkpoints' / '2'))
  DAMAGE['meta_garbled'](str(workdir / 'checkpoints' / '1'))
  ck = Checkpointer(str(workdir), 3)
  with pytest.raises(DamagedCheckpointError) as info:
    ck.restore_latest(_abstract(_state(0)))
  ck.close()
  msg = str(info.value)
  for step in (1, 2, 3):
    assert str(workdir / 'checkpoints' / str(step)) in msg
  assert 'data files' in msg and '_METADATA' in msg and 'reading meta/ failed' in msg
  assert 'Traceback' not in msg
  # Nothing was moved: the user decides.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2', '3']
  assert not os.path.exists(workdir / 'checkpoints.damaged')


def test_a_run_left_by_a_test_is_killed_when_the_test_ends(request):
  # conftest's autouse _reap calls subprocs.reap after every test: a subprocess test that failed
  # or timed out leaves no training run loading the cores of the tests after it.
  assert '_reap' in request.fixturenames  # the fixture wraps every test, this one included
  import subprocess
  import sys
  from tests import subprocs
  p = subprocs.track(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']))
  subprocs.reap()
  assert p.poll() is not None and not subprocs._STARTED


def test_no_checkpoint_means_a_fresh_start(tmp_path):
  ck = Checkpointer(str(tmp_path), 2)
  assert ck.restore_latest(_abstract(_state(0))) is None
  ck.close()


class _ClockJumpsAfterFirstRead:
  """time.time() for Orbax's futures: in each thread, the first read is now and every later one is
  25 minutes on, as if the process had been suspended (SIGSTOP, Ctrl-Z) while a background save was
  committing. Per thread, because a wait reads its start and its elapsed time in one thread, while
  other threads of the save may read the clock first (a shared count made the negative case racy:
  it passed on CI when another thread took the 'now' read)."""

  def __init__(self, jump_s):
    # thread-local, not a set of thread ids: Linux reuses an exited thread's id
    self.jump_s, self.local = jump_s, threading.local()

  def time(self):
    import time as real
    later = getattr(self.local, 'read', False)
    self.local.read = True
    return real.time() + (self.jump_s if later else 0.0)


@pytest.mark.parametrize('timeout_s, survives', [(None, True), (1200, False)])
def test_a_save_outlives_a_long_suspension(tmp_path, monkeypatch, timeout_s, survives):
  # A claims run died on resume after a 98-minute pause: Orbax's commit timeout (1200 s by default)
  # counts wall time. Our saves allow a day. With Orbax's default, the same jump is fatal, which is
  # what shows the clock jump reaches the commit wait at all.
  from orbax.checkpoint._src.futures import future as orbax_future
  kwargs = {} if timeout_s is None else {'async_timeout_s': timeout_s}
  ck = Checkpointer(str(tmp_path), 2, **kwargs)
  monkeypatch.setattr(orbax_future, 'time', _ClockJumpsAfterFirstRead(25 * 60))
  try:
    ck.save(1, _state(1), {'data_index': 10})
    ck.latest.wait_until_finished()
    assert survives
  except TimeoutError:
    assert not survives
  finally:
    monkeypatch.undo()
    try:
      ck.close()
    except TimeoutError:
      pass
  if survives:
    assert Checkpointer(str(tmp_path), 2).latest_step() == 1


def test_another_model_is_an_error_naming_the_parameter_and_both_shapes(saved_run, tmp_path):
  workdir = _copy(saved_run, tmp_path)
  ck = Checkpointer(str(workdir), 3)
  with pytest.raises(IncompatibleCheckpointError) as info:
    ck.restore_latest(_abstract(_state(0, w_shape=(5, 3))))
  ck.close()
  msg = str(info.value)
  assert str(workdir / 'checkpoints' / '3') in msg and 'does not match this model' in msg
  assert 'params/backbone/w' in msg and '(4, 3)' in msg and '(5, 3)' in msg
  assert 'damaged' not in msg
  assert isinstance(info.value, ValueError)  # what callers caught before


def test_mismatching_latest_does_not_fall_back_to_an_older_matching_one(tmp_path):
  # Steps 1 and 2 hold this model, step 3 another one: no silent resume from step 2.
  _write_run(tmp_path, steps=(1, 2))
  ck = Checkpointer(str(tmp_path), 3)
  ck.save(3, _state(3, w_shape=(6, 3)), {'data_index': 30})
  ck.close()
  ck = Checkpointer(str(tmp_path), 3)
  with warnings.catch_warnings():
    warnings.simplefilter('error', DamagedCheckpointWarning)
    with pytest.raises(IncompatibleCheckpointError, match=r'params/backbone/w has shape \(6, 3\)'
                       r' in the checkpoint, this model expects \(4, 3\)'):
      ck.restore_latest(_abstract(_state(0)))
  ck.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3']


def test_missing_and_unexpected_parameters_are_named(saved_run, tmp_path):
  workdir = _copy(saved_run, tmp_path)
  ck = Checkpointer(str(workdir), 3)
  extra = _state(0)
  extra['params']['memory']['write_head'] = jnp.zeros((3, 7))
  with pytest.raises(IncompatibleCheckpointError,
                     match=r'params/memory/write_head \(shape \(3, 7\) in this model\) is missing'):
    ck.restore_latest(_abstract(extra))
  fewer = _state(0)
  del fewer['params']['memory']
  fewer['opt_state'] = optax.adamw(1e-3).init(fewer['params'])
  with pytest.raises(IncompatibleCheckpointError, match='mem_init.*that this model does not have'):
    ck.restore_latest(_abstract(fewer))
  ck.close()


# load_params: train.init_from and evaluation. No fallback: the path and the reason.


def test_load_params_from_workdir_manager_dir_and_one_step(saved_run):
  abstract = _abstract(_params(0.0))
  params, meta = load_params(str(saved_run), abstract)  # best/ first
  assert meta['step'] == 3
  np.testing.assert_array_equal(params['memory']['mem_init'], 3.0 * np.ones((2, 3)))
  params, meta = load_params(str(saved_run / 'checkpoints'), abstract)
  assert meta['step'] == 3 and meta['data_index'] == 30
  params, meta = load_params(str(saved_run / 'checkpoints' / '2'), abstract)
  assert meta['step'] == 2
  np.testing.assert_array_equal(params['backbone']['w'], 2.0 * np.ones((4, 3)))


@pytest.mark.parametrize('damage', ['data_truncated', 'tree_metadata_garbled',
                                    'commit_marker_missing', 'meta_item_missing'])
@pytest.mark.parametrize('sub,item', [('best', 'params'), ('checkpoints', 'state')])
def test_load_params_of_a_damaged_checkpoint_names_path_and_reason(saved_run, tmp_path, damage,
                                                                   sub, item):
  workdir = _copy(saved_run, tmp_path)
  step_dir = str(workdir / sub / '3')
  if damage == 'tree_metadata_garbled':
    _garble(os.path.join(step_dir, item, '_METADATA'))
  elif damage == 'data_truncated':
    [_truncate(p) for p in _data_files(step_dir, item)]
  else:
    DAMAGE[damage](step_dir)
  reason = {'data_truncated': 'data files', 'tree_metadata_garbled': '_METADATA',
            'commit_marker_missing': 'commit_success.txt', 'meta_item_missing': 'meta/'}[damage]
  with pytest.raises(DamagedCheckpointError) as info:
    load_params(str(workdir / sub), _abstract(_params(0.0)))
  assert step_dir in str(info.value) and reason in str(info.value)
  assert 'does not match' not in str(info.value)
  if sub == 'best':  # from the workdir: no silent switch to checkpoints/ either
    with pytest.raises(DamagedCheckpointError, match=step_dir):
      load_params(str(workdir), _abstract(_params(0.0)))


@pytest.mark.parametrize('sub', ['best', 'checkpoints'])
def test_load_params_of_another_model_names_parameter_and_shapes(saved_run, sub):
  with pytest.raises(IncompatibleCheckpointError) as info:
    load_params(str(saved_run / sub), _abstract(_params(0.0, w_shape=(4, 8))))
  msg = str(info.value)
  assert str(saved_run / sub / '3') in msg
  assert 'backbone/w has shape (4, 3) in the checkpoint, this model expects (4, 8)' in msg


def test_load_params_without_checkpoints(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint directory'):
    load_params(str(tmp_path / 'nope'), _abstract(_params(0.0)))
  with pytest.raises(FileNotFoundError, match='no finished checkpoint'):
    load_params(str(tmp_path), _abstract(_params(0.0)))


# ------------------------------------------------------------------------------------------------
# metrics.jsonl: the log is for reading, it never blocks a resume.


def _rows(path):
  return [json.loads(l) for l in open(path, 'rb').read().decode('utf-8').splitlines()]


@pytest.mark.parametrize('bad, why', [
    (b'{"step": 2, "loss": 1.\xff}\n', 'not UTF-8'),
    (b'\xfe\xfe\xfe\n', 'not UTF-8'),
    (b'this is not json\n', 'not JSON'),
    (b'[1, 2, 3]\n', 'not an object'),
    (b'"step"\n', 'not an object'),
    (b'{"loss": 1.0}\n', 'no numeric "step"'),
    (b'{"step": "7", "loss": 1.0}\n', 'no numeric "step"'),
    (b'{"step": true}\n', 'no numeric "step"'),
    (b'null\n', 'not an object'),
])
def test_bad_metrics_line_does_not_block_resume(tmp_path, bad, why):
  path = tmp_path / 'metrics.jsonl'
  good = [json.dumps({'step': s, 'loss': 1.0 / s}).encode() + b'\n' for s in (1, 2, 3, 4)]
  path.write_bytes(good[0] + bad + good[1] + good[2] + good[3] + b'{"step": 5, "lo')  # torn
  pattern = rf'line 2 \([^)]*{re.escape(why)}\)'
  with pytest.warns(UserWarning, match=pattern) as record:
    writer = MetricsWriter(str(tmp_path), resume_step=3)
  assert any(str(path) in str(w.message) for w in record if re.search(pattern, str(w.message)))
  writer.write(4, {'loss': 0.5})
  writer.close()
  rows = _rows(path)
  assert [r['step'] for r in rows] == [1, 2, 3, 4] and rows[-1]['loss'] == 0.5
  assert (tmp_path / 'metrics.jsonl.rejected').read_bytes() == bad  # kept, not lost


def test_metrics_resume_keeps_good_rows_and_drops_torn_line_quietly(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 1, 'loss': 2.0}, {'step': 2, 'val/em': 0.5, 'loss': float('nan')},
          {'step': 3, 'loss': 1.0}]
  text = ''.join(json.dumps(r) + '\n' for r in rows)
  path.write_text(text + '{"step": 4, "lo')
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a torn last line is the normal result of a kill
    MetricsWriter(str(tmp_path), resume_step=2).close()
  kept = path.read_text().splitlines()
  assert kept == text.splitlines()[:2]  # byte for byte, NaN included
  assert not (tmp_path / 'metrics.jsonl.rejected').exists()


def test_unreadable_metrics_file_does_not_block_resume(tmp_path):
  (tmp_path / 'metrics.jsonl').mkdir()  # not even a file
  with pytest.warns(UserWarning, match='metrics.jsonl'):
    writer = MetricsWriter(str(tmp_path), resume_step=3)
  with pytest.warns(UserWarning, match='could not append'):
    writer.write(4, {'loss': 1.0})
  writer.close()


# ------------------------------------------------------------------------------------------------
# End to end: a finished tiny run whose latest checkpoint is damaged and whose metrics log holds a
# bad line resumes from the previous checkpoint and finishes again.


def test_run_resumes_past_a_damaged_checkpoint_and_a_bad_metrics_line(tmp_path):
  from configs import kv_retrieval
  from gradmem_jax.training import train_and_evaluate
  config = kv_retrieval.get_config('tiny')  # 6 steps, checkpoints at steps 3 and 6
  first = train_and_evaluate(config, str(tmp_path))
  assert first['steps'] == 6 and sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  DAMAGE['data_truncated'](str(tmp_path / 'checkpoints' / '6'))
  with open(tmp_path / 'metrics.jsonl', 'ab') as f:
    f.write(b'\xff\xfe not a row\n[1, 2]\n')
  with pytest.warns(UserWarning) as record:
    again = train_and_evaluate(config, str(tmp_path))
  messages = [str(r.message) for r in record]
  assert any('checkpoints/6' in m and 'checkpoints/3' in m for m in messages), messages
  assert any('metrics.jsonl' in m and 'not UTF-8' in m for m in messages), messages
  assert again['steps'] == 6 and again.get('stop_reason') != 'already finished'
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  assert os.listdir(tmp_path / 'checkpoints.damaged') == ['6']
  steps = [r['step'] for r in _rows(tmp_path / 'metrics.jsonl') if 'loss' in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_metrics_last_row_missing_only_its_newline_is_kept(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}')
  MetricsWriter(str(tmp_path), resume_step=2).close()
  assert [r['step'] for r in _rows(path)] == [1, 2]


def test_resume_sets_aside_best_checkpoints_newer_than_the_resumed_step(tmp_path):
  # Killed after saving the best parameters at step 2 but before the resumable checkpoint at 2.
  # The resumed run starts at 1 and reaches step 2 again; Orbax refuses an existing step
  # (StepAlreadyExistsError killed a claims run, 2026-11-27), so the copy is set aside, not
  # deleted: with one best kept, Orbax removed the older best when step 2's committed, so this
  # copy is the only best parameters on disk.
  ck = Checkpointer(str(tmp_path), 2)
  ck.save(1, _state(1), {'data_index': 10})
  ck.save_best(2, _params(2.0), {'step': 2})
  ck.close()
  ck = Checkpointer(str(tmp_path), 2)
  state, _ = ck.restore_latest(_abstract(_state(0)))
  assert int(state['step']) == 1
  moved = ck.set_aside_best_after(1)
  assert moved == [(str(tmp_path / 'best' / '2'), str(tmp_path / 'best.lost' / '2'))]
  assert ck.set_aside_best_after(1) == []
  ck.save_best(2, _params(5.0), {'step': 2})  # the resumed run can save that step again
  ck.close()
  assert sorted(os.listdir(tmp_path / 'best.lost' / '2')) == sorted(os.listdir(tmp_path / 'best' / '2'))
  params, meta = load_params(str(tmp_path / 'best'), _abstract(_params(0.0)))
  assert meta['step'] == 2 and float(params['memory']['mem_init'][0, 0]) == 5.0


# ------------------------------------------------------------------------------------------------
# One training process per workdir (gradmem_jax/workdir_lock.py).


def test_a_second_run_on_a_busy_workdir_stops_before_touching_it(tmp_path):
  from configs import kv_retrieval
  from gradmem_jax import workdir_lock
  from gradmem_jax.training import train_and_evaluate
  wd = str(tmp_path / 'run')
  with workdir_lock.hold(wd):  # another open file, so it conflicts like another process would
    assert workdir_lock.holder(wd) == f'pid {os.getpid()} on {__import__("socket").gethostname()}'
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf'workdir {re.escape(wd)} is in use by another training process '
                             rf'\(pid {os.getpid()} on '):
      train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=2'), wd)
    assert os.listdir(wd) == ['run.lock']  # no checkpoints, config or metrics written
  assert workdir_lock.holder(wd) is None
  r = train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=2'), wd)  # free again: it runs
  assert r['steps'] == 2 and workdir_lock.holder(wd) is None  # and lets go when done


def test_a_bad_config_leaves_no_workdir_behind(tmp_path):
  from configs import kv_retrieval
  from gradmem_jax.training import train_and_evaluate
  config = kv_retrieval.get_config('tiny')
  config.memory.K = -1
  with pytest.raises(ValueError, match='memory.K must be >= 0'):
    train_and_evaluate(config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()  # the run made it, and took it away again
  os.makedirs(tmp_path / 'mine')
  with pytest.raises(ValueError, match='memory.K must be >= 0'):
    train_and_evaluate(config, str(tmp_path / 'mine'))
  assert os.listdir(tmp_path / 'mine') == ['run.lock']  # the user's directory stays


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  import signal
  import subprocess
  import sys
  from gradmem_jax import workdir_lock
  wd = str(tmp_path / 'run')
  code = ('import sys, time; from gradmem_jax import workdir_lock\n'
          f'with workdir_lock.hold({wd!r}):\n  print("held", flush=True); time.sleep(600)\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.Popen([sys.executable, '-c', code], cwd=root, stdout=subprocess.PIPE, text=True)
  try:
    assert p.stdout.readline().strip() == 'held'
    assert workdir_lock.holder(wd).startswith(f'pid {p.pid} on ')
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {p.pid} on '):
      with workdir_lock.hold(wd):
        pass
    # The command line says so and exits with its own status.
    out = subprocess.run([sys.executable, '-m', 'experiments.kv_retrieval',
                          '--config=configs/kv_retrieval.py:tiny', f'--workdir={wd}'],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 4, out.stderr[-2000:]
    assert f'is in use by another training process (pid {p.pid} on ' in out.stderr
    assert os.listdir(wd) == ['run.lock']
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert workdir_lock.holder(wd) is None
  with workdir_lock.hold(wd):  # taken over without clearing anything by hand
    assert workdir_lock.holder(wd).startswith(f'pid {os.getpid()} on ')
