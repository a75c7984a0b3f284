"""Fault injection: tiny KV runs are killed (SIGKILL, nothing flushed or cleaned up) at several
points, then resumed in the same workdir; each resumed run must end bit-identical to an
uninterrupted run (parameter checksum, loss / gradient-norm history, validation and final metrics).

Kill points:
  in_save_created    inside a checkpoint save, right after orbax created the temporary directory
                     (nothing written yet)
  in_save_uncommitted  inside a save, after every array is written and before orbax commits it
                     (the rename that makes the step a checkpoint)
  random             a seeded random delay after a given checkpoint appeared: in a train step,
                     an evaluation or the next save

The two in-save points are hit exactly: a launcher wraps orbax's temporary-path class for the run
(AtomicRenameTemporaryPath, what orbax uses on a local disk) and kills the process there.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from configs import kv_retrieval
from gradmem_jax.training import abstract_state, build_experiment
from gradmem_jax.training.checkpoint import Checkpointer
from tests.subprocs import track

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
ARG = f'tiny,max_steps={STEPS},train.checkpoint_every=2,train.eval_every=6'

LAUNCHER = r'''
import os, signal, sys
sys.path.insert(0, os.getcwd())  # the checkout (the run starts there)
point, where = os.environ.get('KILL_POINT', ''), os.environ.get('KILL_AT', '')
if point:
  from orbax.checkpoint._src.path import atomicity
  cls = atomicity.AtomicRenameTemporaryPath
  name = {'in_save_created': 'create', 'in_save_uncommitted': 'finalize'}[point]
  orig = getattr(cls, name)
  async def wrapped(self, *args, **kwargs):
    final = os.fspath(self.get_final())  # <workdir>/<checkpoints|best>/<step>
    if os.path.join(os.path.basename(os.path.dirname(final)), os.path.basename(final)) == where:
      if name == 'create':
        await orig(self, *args, **kwargs)
      open(os.environ['KILL_MARK'], 'w').write(point)
      os.kill(os.getpid(), signal.SIGKILL)
    return await orig(self, *args, **kwargs)
  setattr(cls, name, wrapped)
from gradmem_jax.training import cli
cli.run('configs/kv_retrieval.py')
'''


def _start(tmp_path, name, env=None):
  """A run in a subprocess, its console in <name>.log (an unread pipe could fill and block it)."""
  launcher = tmp_path / 'launch.py'
  launcher.write_text(LAUNCHER)
  cmd = [sys.executable, str(launcher), f'--config={ROOT}/configs/kv_retrieval.py:{ARG}',
         f'--workdir={tmp_path / name}']
  full = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu', **(env or {}))
  for k in ('KILL_POINT', 'KILL_AT', 'KILL_MARK'):
    if not env or k not in env:
      full.pop(k, None)
  log = open(tmp_path / f'{name}.log', 'a')
  return track(subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT))


def _log(tmp_path, name):
  return (tmp_path / f'{name}.log').read_text()


def _outcome(workdir):
  r = json.load(open(os.path.join(workdir, 'results.json')))
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [(x['step'], x['loss'], x['grad_norm'], x['param_norm']) for x in rows if 'loss' in x]
  val = [(x['step'], x.get('val/em'), x.get('val/token_acc'), x.get('val/target_loss'))
         for x in rows if 'val/token_acc' in x]
  return {'checksum': r['params_checksum'], 'steps': r['steps'], 'final': r['final'],
          'best': r['best'], 'best_step': r['best_step'], 'train': train, 'val': val}


def _state(workdir):
  """(state, meta) of the latest resumable checkpoint: params, optimizer state and step."""
  abstract, _ = abstract_state(build_experiment(kv_retrieval.get_config(ARG)))
  ck = Checkpointer(str(workdir), 2)
  try:
    return ck.restore_latest(abstract)
  finally:
    ck.close()


def _assert_same_state(got, want, what):
  (s1, m1), (s2, m2) = got, want
  assert m1['data_index'] == m2['data_index'], what
  assert int(s1['step']) == int(s2['step']) == STEPS, what
  la, lb = jax.tree_util.tree_leaves_with_path(s1), jax.tree_util.tree_leaves(s2)
  assert len(la) == len(lb), what
  for (path, a), b in zip(la, lb):  # params, optimizer moments and counts, step
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f'{what}: {path}')


def _kill_after_checkpoint(proc, workdir, step, delay, timeout=900):
  """SIGKILLs `proc` `delay` seconds after checkpoint `step` appeared. -> False when the run ended
  first."""
  d = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(d):
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.005)
  time.sleep(delay)
  if proc.poll() is not None:
    return False
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return True


def test_killed_runs_resume_bit_identical(tmp_path):
  rng = random.Random(0)
  # (point, checkpoint directory, step[, delay]): the best-checkpoint save of step 6 (an
  # evaluation step), the resumable checkpoint of step 12, and a random point after step 4-16.
  plans = [('in_save_created', 'best', 6), ('in_save_uncommitted', 'checkpoints', 12),
           ('random', 'checkpoints', rng.randrange(4, 17, 2), rng.uniform(0.0, 0.3))]
  clean = _start(tmp_path, 'clean')
  procs = []
  for i, plan in enumerate(plans):
    env = None
    if plan[0] != 'random':
      env = {'KILL_POINT': plan[0], 'KILL_AT': f'{plan[1]}/{plan[2]}',
             'KILL_MARK': str(tmp_path / f'killed{i}.mark')}
    procs.append(_start(tmp_path, f'killed{i}', env))
  # The random kill is watched first: it runs beside the others, and watched after them it could
  # finish before its kill point is looked for (seen once in the suite under load).
  order = sorted(range(len(plans)), key=lambda i: plans[i][0] != 'random')
  for i, (plan, p) in [(i, (plans[i], procs[i])) for i in order]:
    if plan[0] == 'random':
      assert _kill_after_checkpoint(p, tmp_path / f'killed{i}', plan[2], plan[3]), (
          f'run {i} ended before its planned kill {plan}:\n{_log(tmp_path, f"killed{i}")[-2000:]}')
    else:
      p.wait(timeout=900)
      assert p.returncode == -signal.SIGKILL, (
          f'{plan} was not hit (rc {p.returncode}):\n{_log(tmp_path, f"killed{i}")[-2000:]}')
      assert (tmp_path / f'killed{i}.mark').read_text() == plan[0]
  # What the kills left: an uncommitted temporary directory of the step being saved.
  for i, (_, where, step) in enumerate(plans[:2]):
    names = os.listdir(tmp_path / f'killed{i}' / where)
    assert str(step) not in names, names
    assert any(n.startswith(f'{step}.') for n in names), names
  resumes = [_start(tmp_path, f'killed{i}') for i in range(len(plans))]
  clean.wait(timeout=900)  # the limits only catch a hang (a run takes 20-45 s)
  assert clean.returncode == 0, _log(tmp_path, 'clean')[-3000:]
  want, want_state = _outcome(tmp_path / 'clean'), _state(tmp_path / 'clean')
  assert want['steps'] == STEPS
  assert want_state[1]['data_index'] == STEPS * kv_retrieval.get_config(ARG).optim.batch_size
  for i, p in enumerate(resumes):
    p.wait(timeout=900)
    out = _log(tmp_path, f'killed{i}')
    assert p.returncode == 0, f'resume after {plans[i]} failed:\n{out[-3000:]}'
    m = re.findall(r'steps (\d+)->', out)
    assert m and 0 < int(m[-1]) < STEPS, out[-2000:]  # resumed from a checkpoint, not from 0
    what = f'killed at {plans[i]}, resumed at step {m[-1]}'
    got = _outcome(tmp_path / f'killed{i}')
    assert got == want, what
    # No duplicated or torn metrics rows across the kill.
    assert [s for s, *_ in got['train']] == list(range(1, STEPS + 1)), what
    _assert_same_state(_state(tmp_path / f'killed{i}'), want_state, what)
