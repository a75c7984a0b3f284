"""Sweeps, reports and the method comparison command."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import jax
import numpy as np
import pytest

from gradmem_jax import report, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd=ROOT, timeout=600):
  out = subprocess.run([sys.executable, '-m'] + args, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.fixture
def two_point_sweep(tmp_path):
  path = tmp_path / 'two.py'
  path.write_text(
      'from gradmem_jax.sweeps import Sweep, grid\n'
      'def get_sweep(arg=None):\n'
      '  return Sweep("two", grid(K=[1, 2]), base="tiny,max_steps=4,train.checkpoint_every=2", '
      'figures=("em_vs:K",))\n')
  return str(path)


def test_sweep_runs_points_then_skips_them(tmp_path, two_point_sweep):
  sd = tmp_path / 'sweep'
  args = ['experiments.sweep', f'--config={ROOT}/configs/kv_retrieval.py',
          f'--sweep={two_point_sweep}', f'--sweep_dir={sd}', '--K_eval=1,2']
  first = _run(args)
  assert first.count(': running') == 2
  for slug in ('K=1', 'K=2'):
    r = json.load(open(sd / slug / 'results.json'))
    assert r['K'] == int(slug[-1]) and r['steps'] == 4
    assert [row['K_eval'] for row in json.load(open(sd / slug / 'k_extrapolation.json'))] == [1, 2]
  # A point is evaluated as soon as it finishes, before the next one starts: a sweep cut short
  # keeps the K extrapolation of what it finished.
  assert first.index('K=1: evaluated with K_eval=[1, 2]') < first.index('[2/2] K=2: running')
  assert (sd / 'report.md').exists() and (sd / 'em_vs_K.png').stat().st_size > 0
  # The end of the sweep evaluates, in its own process, a finished point that has none, and gets
  # what the point's own evaluation process got.
  own = json.load(open(sd / 'K=2' / 'k_extrapolation.json'))
  os.remove(sd / 'K=2' / 'k_extrapolation.json')
  second = _run(args)
  assert second.count('finished, skipped') == 2 and ': running' not in second
  assert 'K=2: evaluated with K_eval=[1, 2]' in second and 'K=1: evaluated' not in second
  assert json.load(open(sd / 'K=2' / 'k_extrapolation.json')) == own
  # The machine goes, and K=2 with it after its step-2 checkpoint (a run longer than the
  # machine's life: step 4 and results.json never written). The archive (with every point's best
  # parameters, and a snapshot of the unfinished K=2) comes back in a fresh sweep dir: K=1's
  # parameters load as the run's own did, and K=2 resumes at step 2 and ends where the run that
  # never stopped ended, bit for bit.
  from configs import kv_retrieval
  from gradmem_jax.training import abstract_state, build_experiment
  from gradmem_jax.training.checkpoint import load_params
  arg = 'tiny,max_steps=4,train.checkpoint_every=2'
  abstract = abstract_state(build_experiment(kv_retrieval.get_config(arg)))[0]
  want = load_params(str(sd / 'K=1'), abstract['params'])
  want_k2 = load_params(str(sd / 'K=2' / 'checkpoints' / '4'), abstract['params'])[0]
  results_k2 = json.load(open(sd / 'K=2' / 'results.json'))
  for lost in ('results.json', 'k_extrapolation.json', 'checkpoints/4'):
    (shutil.rmtree if os.path.isdir(sd / 'K=2' / lost) else os.remove)(sd / 'K=2' / lost)
  archive = tmp_path / 'archive'
  printed = _run(['experiments.archive', f'--sweep_dir={sd}', f'--out={archive}', '--best=all'])
  assert 'archived 1 finished points' in printed and 'snapshotted 1 unfinished points' in printed
  assert 'K=2: step 2' in printed
  assert sorted(os.listdir(archive / 'K=2' / 'checkpoints')) == ['2']
  assert json.load(open(archive / 'K=2' / sweeps.UNFINISHED_MARKER)) == {'step': 2, 'max_steps': 4}
  shutil.rmtree(sd)
  sd2 = tmp_path / 'sweep2'
  third = _run(args[:-1] + [f'--sweep_dir={sd2}', f'--from_archive={archive}'])
  assert 'restored 1 finished points' in third and third.count('finished, skipped') == 1
  assert 'K=2: resumes from its archived step 2' in third
  assert 'steps 2->4' in (sd2 / 'K=2' / 'stdout.log').read_text()  # not 0->4
  got = load_params(str(sd2 / 'K=1'), abstract['params'])
  assert got[1] == want[1]  # the step and the metrics it was kept for
  for a, b in zip(jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(want[0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  got_k2 = load_params(str(sd2 / 'K=2' / 'checkpoints' / '4'), abstract['params'])[0]
  for a, b in zip(jax.tree_util.tree_leaves(got_k2), jax.tree_util.tree_leaves(want_k2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  resumed = json.load(open(sd2 / 'K=2' / 'results.json'))
  assert resumed['steps'] == 4 and resumed['best'] == results_k2['best']
  # Each session of the run says where it ran: the snapshot carried the first one's record.
  from gradmem_jax import environment
  assert sweeps.ARCHIVED_FILES[-1] == 'results.json'  # written last: a point is whole once there
  assert environment.ENVIRONMENT_FILE in sweeps.ARCHIVED_FILES
  sessions = environment.read(str(sd2 / 'K=2'))
  assert [e['start_step'] for e in sessions] == [0, 2]
  assert resumed['environment'] == sessions[-1]
  (k2,) = [r for r in sweeps.collect(str(sd2)) if r['slug'] == 'K=2']
  assert k2['machines'] == [environment.machine(sessions[0])]  # one machine, two sessions
  # Archived again, finished: the snapshot goes, the results stay.
  sweeps.archive(str(sd2), str(archive))
  assert sweeps.archive_unfinished(str(sd2), str(archive)) == []
  assert sweeps.is_finished(archive / 'K=2') and not (archive / 'K=2' / 'checkpoints').exists()
  assert not (archive / 'K=2' / sweeps.UNFINISHED_MARKER).exists()
  assert environment.read(str(archive / 'K=2')) == sessions


def test_collect_names_where_each_run_ran(tmp_path):
  from gradmem_jax import environment
  a = {'platform': 'cpu', 'cpu_model': 'A', 'cpus_usable': 2}
  b = {'platform': 'gpu', 'device_kind': 'H100', 'device_count': 1}
  runs = {'moved': [(0, a), (5, a), (10, b), (15, a)],  # finished back on A: that shows
          'older': [(7, b)],  # began before environment.jsonl
          'none': []}
  for name, sessions in runs.items():
    os.makedirs(tmp_path / name)
    (tmp_path / name / 'results.json').write_text(json.dumps({'best': {'em': 0.5}}))
    lines = [json.dumps({'start_step': s, **e}) for s, e in sessions]
    (tmp_path / name / environment.ENVIRONMENT_FILE).write_text(
        '\n'.join(lines + ['{"torn', '[1]']) + '\n')  # a torn line and a non-object: skipped
  # A run from before results.json named its curriculum source: its config.json does.
  (tmp_path / 'older' / 'config.json').write_text(json.dumps(
      {'train': {'init_from': '/runs/claims/n_pairs=2', 'init_from_part': ''}}))
  (tmp_path / 'none' / 'config.json').write_text('{"train": ')  # unreadable: no source named
  # A resume without init_from moved the first config to config.prev.json: that one names it.
  (tmp_path / 'moved' / 'config.json').write_text(json.dumps({'train': {'init_from': ''}}))
  (tmp_path / 'moved' / 'config.prev.json').write_text(json.dumps(
      {'train': {'init_from': '/runs/claims/n_pairs=4', 'init_from_part': 'backbone'}}))
  collected = sweeps.collect(str(tmp_path))
  got = {r['slug']: r['machines'] for r in collected}
  assert got == {'moved': ['A, 2 CPUs', '1 x H100', 'A, 2 CPUs'],
                 'older': ['not recorded', '1 x H100'], 'none': []}
  assert {r['slug']: r['init_from'] for r in collected} == {
      'moved': {'path': '/runs/claims/n_pairs=4', 'part': 'backbone'},
      'older': {'path': '/runs/claims/n_pairs=2', 'part': None}, 'none': None}
  # Neither config names it: the sweep's manifest does (its chains).
  (tmp_path / 'sweep.json').write_text(json.dumps(
      {'points': [], 'init_from': {'none': 'older'}}))
  (none,) = [r for r in sweeps.collect(str(tmp_path)) if r['slug'] == 'none']
  assert none['init_from'] == {'path': 'older', 'part': None}  # the point's name
  # The CPUs recorded are those the process may use: one for a point a sweep pins to one CPU.
  code = 'from gradmem_jax import environment; print(environment.usable_cpus())'
  out = subprocess.run(sweeps._pinned([sys.executable, '-c', code], {0}), capture_output=True,
                       text=True, check=True, cwd=ROOT).stdout
  assert out.strip() == '1'
  # A description that fails is recorded as the error, and the run goes on.
  with mock.patch.object(environment, 'describe', side_effect=RuntimeError('no backend')):
    rec = environment.record(str(tmp_path / 'none'), 3)
  assert rec['error'] == 'RuntimeError: no backend'
  assert environment.machine(rec) == 'not recorded (RuntimeError: no backend)'
  # A resume elsewhere than the last session says so; on the same machine and software it does not.
  pk = {'packages': {'jax': '0.10.2', 'jaxlib': '0.10.2'}}
  one = {**a, **pk, 'cpus_usable': 1}
  assert environment.resume_note([], {**a, **pk, 'start_step': 5}) is None
  assert environment.resume_note([{**a, **pk}], {**a, **pk, 'start_step': 5}) is None
  assert environment.resume_note([rec], {**a, **pk, 'start_step': 5}) is None  # not known
  assert 'A, 2 CPUs -> A, 1 CPU' in environment.resume_note([{**a, **pk}],
                                                               {**one, 'start_step': 5})
  newer = {**a, 'packages': {'jax': '0.12.0', 'jaxlib': '0.12.0'}, 'start_step': 5}
  assert "'jaxlib': '0.12.0'" in environment.resume_note([{**a, **pk}], newer)


def test_a_curriculum_chain_continues_from_its_archive_in_a_fresh_sweep_dir(tmp_path):
  # Session 1 ran the chain's first two steps (n_pairs=2, 4) and a point of no chain, and archived
  # them; its machine is gone. Session 2 restores the archive into a new sweep dir and runs the
  # chain's next step from the archived best parameters. The module that trains does not exist
  # here: a started point fails at once, so 'failed' means "started" and 'blocked' "not started".
  chain = sweeps.Sweep('chain', [{'n_pairs': 2}, {'n_pairs': 4}, {'n_pairs': 8}, {'n_pairs': 3}],
                       base='tiny', init_from={'n_pairs=4': 'n_pairs=2', 'n_pairs=8': 'n_pairs=4'})
  # session 1 ran a variant that stops at n_pairs=4: its manifest does not know n_pairs=8
  part = sweeps.Sweep('chain', chain.points[:2] + chain.points[3:], base='tiny',
                      init_from={'n_pairs=4': 'n_pairs=2'})
  sd, out = tmp_path / 'runs', tmp_path / 'archive'
  sweeps.write_manifest(str(sd), 'configs/kv_retrieval.py', part)

  def finish(d, name, content):
    os.makedirs(d / name / 'best' / '100' / 'params', exist_ok=True)
    (d / name / 'best' / '100' / 'params' / 'data').write_bytes(content)
    os.makedirs(d / name / 'checkpoints' / '100', exist_ok=True)
    (d / name / 'results.json').write_text(json.dumps({'best': {'em': len(content)}}))

  for name in ('n_pairs=2', 'n_pairs=4', 'n_pairs=3'):
    finish(sd, name, name.encode())
  assert sweeps.archive(str(sd), str(out)) == ['n_pairs=2', 'n_pairs=3', 'n_pairs=4']
  # Both points of the chain keep best/ (n_pairs=4 too: a fuller variant continues from it),
  # the point of no chain does not, and no point keeps checkpoints/.
  for name in ('n_pairs=2', 'n_pairs=4'):
    assert sorted(os.listdir(out / name)) == ['best', 'results.json']
    assert (out / name / 'best' / '100' / 'params' / 'data').read_bytes() == name.encode()
  assert os.listdir(out / 'n_pairs=3') == ['results.json']
  # Archiving a point again replaces its best/ (a rerun's) and keeps an unchanged point's even
  # when not asked for it (archived with 'all' once, then with the default).
  finish(sd, 'n_pairs=2', b'rerun')
  sweeps.archive(str(sd), str(out), best='all')
  assert (out / 'n_pairs=2' / 'best' / '100' / 'params' / 'data').read_bytes() == b'rerun'
  sweeps.archive(str(sd), str(out))
  assert os.path.isdir(out / 'n_pairs=3' / 'best')
  assert not [n for n in os.listdir(out / 'n_pairs=2') if n.endswith(('.tmp', '.old'))]
  shutil.rmtree(sd)

  sd2 = tmp_path / 'runs2'
  os.makedirs(sd2 / 'n_pairs=3')  # a live, unfinished run of a point: never replaced
  logs = []
  restore = lambda a, d: sweeps.restore(str(a), str(d), chain, 'configs/kv_retrieval.py',
                                        log=logs.append)
  assert restore(out, sd2) == ['n_pairs=2', 'n_pairs=4']
  assert 'holds an unfinished run; left as it is' in logs[0]
  assert sorted(os.listdir(sd2)) == ['n_pairs=2', 'n_pairs=3', 'n_pairs=4', 'sweep.json.lock']
  assert (sd2 / 'n_pairs=4' / 'best' / '100' / 'params' / 'data').read_bytes() == b'n_pairs=4'
  run = lambda d: {s['slug']: s['status'] for s in sweeps.run_sweep(
      'configs/kv_retrieval.py', chain, str(d), module='experiments.no_such_module',
      log=lambda _: None, cwd=ROOT)}
  assert run(sd2) == {'n_pairs=2': 'skipped', 'n_pairs=4': 'skipped',
                      'n_pairs=8': 'failed (exit 1)', 'n_pairs=3': 'failed (exit 1)'}
  # A source run again (its directory lost) after its user finished: the sweep says the chain
  # will mix runs.
  shutil.rmtree(sd2 / 'n_pairs=2')
  logs = []
  sweeps.run_sweep('configs/kv_retrieval.py', chain, str(sd2), module='experiments.no_such_module',
                   log=logs.append, cwd=ROOT)
  (note,) = [l for l in logs if 'note:' in l]
  assert note == ('  note: n_pairs=4 started from an earlier run of this point and will not grow '
                  'from this one; run them again too (--only), or the claims report names the '
                  'chain as one that mixes runs')
  assert logs[logs.index(note) - 1].startswith('[1/4] n_pairs=2: running')
  shutil.rmtree(sd2 / 'n_pairs=2')  # the failed start: the archived run comes back instead
  restore(out, sd2)

  # An archive without parameters: a point that a point to run starts from is not restored (it
  # runs again), and neither is its own source, for the same reason; the rest is restored.
  bare = tmp_path / 'bare'
  sweeps.archive(str(sd2), str(bare), best='none')
  assert sorted(os.listdir(bare / 'n_pairs=2')) == ['results.json']
  logs = []
  assert restore(bare, tmp_path / 'runs3') == []  # n_pairs=3 unfinished in sd2: not archived
  assert [l.split(':')[0].strip() for l in logs] == ['n_pairs=2', 'n_pairs=4']
  assert all('runs again' in l for l in logs)
  # Without the points that need them, such points are restored: K extrapolation then skips
  # them, and a point that starts from one is blocked, saying why.
  sd4 = tmp_path / 'runs4'
  finish(sd4, 'n_pairs=8', b'8')
  shutil.rmtree(sd4 / 'n_pairs=8' / 'best')
  shutil.rmtree(sd4 / 'n_pairs=8' / 'checkpoints')
  assert restore(bare, sd4) == ['n_pairs=2', 'n_pairs=4']
  logs = []
  sweeps.evaluate_points(chain, str(sd4), [1, 2], log=logs.append)
  assert len(logs) == 3 and all('not evaluated with K_eval' in l for l in logs)
  shutil.rmtree(sd4 / 'n_pairs=8')
  assert run(sd4)['n_pairs=8'] == 'blocked (source n_pairs=4 has no parameters)'
  # Archived with 'none', an archived best/ goes; a wrong value, sweep or config is refused.
  sweeps.archive(str(sd2), str(out), best='none')
  assert not (out / 'n_pairs=2' / 'best').exists()
  with pytest.raises(ValueError, match="best='some'; allowed: curriculum, all, none"):
    sweeps.archive(str(sd2), str(out), best='some')
  with pytest.raises(ValueError, match="holds sweep 'chain' .*not 'other'"):
    sweeps.restore(str(out), str(sd2), sweeps.Sweep('other', [{'n_pairs': 2}], base='tiny'),
                   'configs/kv_retrieval.py')
  with pytest.raises(ValueError, match='ran with --config=configs/kv_retrieval.py, not'):
    sweeps.restore(str(out), str(sd2), chain, 'configs/babi.py')
  with pytest.raises(FileNotFoundError, match='no sweep.json there'):
    sweeps.restore(str(sd2 / 'n_pairs=2'), str(sd2), chain, 'configs/kv_retrieval.py')


def test_variants_sharing_a_dir_keep_each_others_points_in_the_manifest(tmp_path):
  # claims' cpu_seed0 and k1_seeds write one dir: the second must not drop the first's points, or
  # the report loses their overrides (method, K) and with them their rows.
  a = sweeps.Sweep('claims', [dict(K=1, seed=0), dict(K=2, seed=0), dict(K=5, seed=0)],
                   base='tiny', init_from={'K=2,seed=0': 'K=1,seed=0', 'K=5,seed=0': 'K=2,seed=0'})
  b = sweeps.Sweep('claims', [dict(K=1, seed=1), dict(K=2, seed=0)], base='tiny')
  write = lambda s: sweeps.write_manifest(str(tmp_path), 'configs/kv_retrieval.py', s)
  read = lambda: json.load(open(tmp_path / 'sweep.json'))
  write(a)
  for name in ('K=1,seed=0', 'K=2,seed=0'):  # K=5 never started: not kept
    os.makedirs(tmp_path / name)
  write(b)
  m = read()
  assert [p['slug'] for p in m['points']] == ['K=1,seed=0', 'K=1,seed=1', 'K=2,seed=0']
  assert m['init_from'] == {'K=2,seed=0': 'K=1,seed=0'}
  assert m['description'].endswith('(and 1 points of other variants run in this dir)')
  # Another base (the points' meaning changed) or another sweep replaces the manifest.
  write(sweeps.Sweep('claims', [dict(K=1, seed=1)], base='tiny,max_steps=9'))
  assert [p['slug'] for p in read()['points']] == ['K=1,seed=1']
  write(b)
  write(sweeps.Sweep('other', [dict(K=5)]))
  m = read()
  assert [p['slug'] for p in m['points']] == ['K=5'] and m['init_from'] == {}
  # An unreadable manifest is rewritten, with a warning (not a crash of every later start).
  (tmp_path / 'sweep.json').write_text('{"name": "oth')
  with pytest.warns(UserWarning, match='unreadable'):
    write(b)
  assert [p['slug'] for p in read()['points']] == ['K=1,seed=1', 'K=2,seed=0']
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_a_point_another_process_is_training_is_left_to_it(tmp_path):
  from gradmem_jax import workdir_lock
  s = sweeps.Sweep('two', [{'n_pairs': 2}, {'n_pairs': 4}], init_from={'n_pairs=4': 'n_pairs=2'})
  sd = tmp_path / 'sd'
  logs = []
  with workdir_lock.hold(str(sd / 'n_pairs=2')):
    # A module that does not exist: a launched point would fail, so 'busy' means not launched.
    status = sweeps.run_sweep('configs/kv_retrieval.py', s, str(sd),
                              module='experiments.no_such_module', log=logs.append, cwd=ROOT)
  assert status[0]['status'].startswith('busy (pid ')
  assert status[1]['status'] == 'blocked (source n_pairs=2 unfinished)'
  assert any('another process is training it' in line for line in logs), logs
  assert not (sd / 'n_pairs=2' / 'stdout.log').exists()


def test_a_point_taken_between_look_and_launch_is_busy_not_failed(tmp_path, monkeypatch):
  from gradmem_jax import workdir_lock
  (tmp_path / 'says_busy.py').write_text(f'import sys\nsys.exit({workdir_lock.BUSY_EXIT})\n')
  monkeypatch.setenv('PYTHONPATH', str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  s = sweeps.Sweep('one', [{'n_pairs': 2}])
  status = sweeps.run_sweep('configs/kv_retrieval.py', s, str(tmp_path / 'sd'),
                            module='says_busy', log=lambda _: None, cwd=ROOT)
  assert status == [{'slug': 'n_pairs=2', 'status': 'busy (it has finished since)'}]


_POINT_STANDIN = """
import json, os, sys, time
wd = [a for a in sys.argv if a.startswith('--workdir=')][0].split('=', 1)[1]
sd, name = os.path.dirname(wd), os.path.basename(wd)
src = [a for a in sys.argv if 'init_from=' in a]
if src and not os.path.exists(os.path.join(src[0].split('init_from=', 1)[1], 'results.json')):
  sys.exit(2)
open(os.path.join(sd, 'started_' + name), 'w').write(repr(time.time()))
json.dump({'cpus': sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
           'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'),
           'mem_fraction': os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')},
          open(os.path.join(wd, 'seen.json'), 'w'))
if name in MEET:
  t = time.time()
  while not all(os.path.exists(os.path.join(sd, 'started_' + m)) for m in MEET):
    if time.time() - t > MEET_TIMEOUT:
      sys.exit(3)
    time.sleep(0.05)
time.sleep(SLEEP.get(name, 0.0))
if name in FAIL:
  sys.exit(1)
for other in ALSO_FINISH.get(name, []):  # as if another process finished that point meanwhile
  os.makedirs(os.path.join(sd, other, 'best', '1'))
  json.dump({'best': {'em': 0.1}, 'wall_time_s': 1.0},
            open(os.path.join(sd, other, 'results.json'), 'w'))
os.makedirs(os.path.join(wd, 'best', '1'))  # its 'parameters'
json.dump({'best': {'em': 0.5}, 'wall_time_s': 1.0}, open(os.path.join(wd, 'results.json'), 'w'))
"""


def _standin(tmp_path, monkeypatch, meet=(), fail=(), sleep=None, meet_timeout=60,
             also_finish=None):
  """A stand-in for the training module: it records what its process was given (CPUs, GPUs, the
  accelerator memory share) and its start time, and finishes its point after sleep[name]
  seconds; the points in `meet` wait until all of them have started (so a sweep that runs them
  one at a time fails them), those in `fail` fail, also_finish[name] lists points it finishes as
  another process would, and a point with a curriculum source exits 2 unless the source had
  finished when it started."""
  (tmp_path / 'standin.py').write_text(
      f'MEET = {list(meet)!r}\nFAIL = {list(fail)!r}\nSLEEP = {dict(sleep or {})!r}\n'
      f'MEET_TIMEOUT = {meet_timeout!r}\nALSO_FINISH = {dict(also_finish or {})!r}\n'
      + _POINT_STANDIN)
  monkeypatch.setenv('PYTHONPATH', str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)


def _points(*ns, init_from=None):
  return sweeps.Sweep('pts', [{'n_pairs': n} for n in ns], init_from=init_from or {})


_CHAIN_AND_ONE = _points(2, 4, 8, init_from={'n_pairs=4': 'n_pairs=2'})


def _seen(sd, n):
  return json.loads((sd / f'n_pairs={n}' / 'seen.json').read_text())


def test_workers_run_points_at_once_and_a_curriculum_point_waits_for_its_source(tmp_path,
                                                                                monkeypatch):
  # N=4 starts from N=2's parameters; N=8 is independent. Two workers: N=2 and N=8 run at once
  # (each waits for the other to start), N=4 only after N=2 has finished.
  _standin(tmp_path, monkeypatch, meet=['n_pairs=2', 'n_pairs=8'])
  sd, logs = tmp_path / 'sd', []
  status = sweeps.run_sweep('configs/kv_retrieval.py', _CHAIN_AND_ONE, str(sd), module='standin',
                            log=logs.append, cwd=ROOT, workers=2, worker_gpus=['0', '1+2'])
  assert [s['status'] for s in status] == ['ok', 'ok', 'ok'], (status, logs)
  assert [s['slug'] for s in status] == ['n_pairs=2', 'n_pairs=4', 'n_pairs=8']
  assert '[1/3] n_pairs=2: running on worker 0 (0/3 done)' in logs
  assert '[3/3] n_pairs=8: running on worker 1 (0/3 done)' in logs
  seen = {n: _seen(sd, n) for n in (2, 4, 8)}
  assert [seen[n]['gpus'] for n in (2, 4, 8)] == ['0', '0', '1,2']  # N=4 on N=2's free worker
  assert all(seen[n]['mem_fraction'] is None for n in (2, 4, 8))  # a card each: no sharing
  mine = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None
  if mine and len(mine) >= 2:  # the CPUs split between the two workers
    assert not set(seen[2]['cpus']) & set(seen[8]['cpus'])
    assert sorted(seen[2]['cpus'] + seen[8]['cpus']) == mine
  # One worker runs them one at a time: N=2 waits for N=8 in vain.
  _standin(tmp_path, monkeypatch, meet=['n_pairs=2', 'n_pairs=8'], meet_timeout=3)
  status = sweeps.run_sweep('configs/kv_retrieval.py', _CHAIN_AND_ONE, str(tmp_path / 'sd1'),
                            module='standin', log=lambda _: None, cwd=ROOT)
  assert status[0]['status'] == 'failed (exit 3)'


def test_a_point_is_looked_at_when_a_worker_can_take_it(tmp_path, monkeypatch):
  # N=4 starts from N=16, which this sweep does not run (--only left it out) and another process
  # finishes while N=2 trains. With one worker, N=4 is looked at after N=2 (it then runs), not
  # when N=2 starts (it would be blocked).
  _standin(tmp_path, monkeypatch, sleep={'n_pairs=2': 1.0}, also_finish={'n_pairs=2': ['n_pairs=16']})
  sd, logs = tmp_path / 'sd', []
  status = sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4, init_from={
      'n_pairs=4': 'n_pairs=16'}), str(sd), module='standin', log=logs.append, cwd=ROOT)
  assert [s['status'] for s in status] == ['ok', 'ok'], (status, logs)


def test_a_point_waits_for_a_source_another_process_is_training(tmp_path, monkeypatch):
  # N=4 starts from N=16, which another process is training (it holds the workdir) and finishes
  # while this sweep's N=2 runs: N=4 waits for it instead of being blocked, and starts on the
  # free worker before N=2 ends (the sweep looks again every few seconds).
  import threading
  from gradmem_jax import workdir_lock
  _standin(tmp_path, monkeypatch, sleep={'n_pairs=2': 9.0})
  sd, held = tmp_path / 'sd', threading.Event()

  def other_process():
    with workdir_lock.hold(str(sd / 'n_pairs=16')):
      held.set()
      time.sleep(1.5)
      os.makedirs(sd / 'n_pairs=16' / 'best' / '1')
      (sd / 'n_pairs=16' / 'results.json').write_text('{"best": {"em": 0.1}, "wall_time_s": 1}')

  other = threading.Thread(target=other_process)
  other.start()
  held.wait(30)
  status = sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4, init_from={
      'n_pairs=4': 'n_pairs=16'}), str(sd), module='standin', log=lambda _: None, cwd=ROOT,
      workers=2)
  other.join()
  assert [s['status'] for s in status] == ['ok', 'ok'], status
  assert float((sd / 'started_n_pairs=4').read_text()) < (
      sd / 'n_pairs=2' / 'results.json').stat().st_mtime


def test_a_chain_whose_first_source_never_ran_is_blocked_link_by_link(tmp_path, monkeypatch):
  # N=4 starts from N=8 (listed after it), N=8 from N=16, which is neither in the sweep nor
  # finished: both are blocked, each with its line, with one worker and with two.
  _standin(tmp_path, monkeypatch)
  for workers in (1, 2):
    logs = []
    status = sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4, 8, init_from={
        'n_pairs=4': 'n_pairs=8', 'n_pairs=8': 'n_pairs=16'}), str(tmp_path / f'sd{workers}'),
        module='standin', log=logs.append, cwd=ROOT, workers=workers)
    assert [s['status'] for s in status] == [
        'ok', 'blocked (source n_pairs=8 unfinished)', 'blocked (source n_pairs=16 unfinished)']
    assert sum('not run, its curriculum source' in l for l in logs) == 2, logs


def test_a_failed_source_blocks_the_point_waiting_for_it_and_the_others_go_on(tmp_path,
                                                                              monkeypatch):
  # Worker 0: N=2 fails after a second; worker 1: N=8 (3 s). N=4 (from N=2) is blocked, and N=16,
  # which starts after the failure, runs.
  _standin(tmp_path, monkeypatch, fail=['n_pairs=2'], sleep={'n_pairs=2': 1.0, 'n_pairs=8': 3.0})
  sd, logs = tmp_path / 'sd', []
  status = sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4, 8, 16, init_from={
      'n_pairs=4': 'n_pairs=2'}), str(sd), module='standin', log=logs.append, cwd=ROOT, workers=2)
  assert [s['status'] for s in status] == [
      'failed (exit 1)', 'blocked (source n_pairs=2 unfinished)', 'ok', 'ok'], (status, logs)
  assert not (sd / 'started_n_pairs=4').exists()
  failed = logs.index(f'  n_pairs=2 failed with exit code 1; see {sd / "n_pairs=2"}/stdout.log')
  assert failed < next(i for i, l in enumerate(logs) if l.startswith('[4/4] n_pairs=16: running'))
  # the workers share the devices: each its share of an accelerator's memory
  assert _seen(sd, 8)['mem_fraction'] == '0.45'


def test_a_points_evaluation_holds_its_worker_only(tmp_path, monkeypatch):
  # N=2's K_eval evaluation takes 3 s on worker 0, with worker 0's GPU; meanwhile worker 1
  # finishes N=4 and takes N=8.
  _standin(tmp_path, monkeypatch)
  monkeypatch.setattr(sweeps, '_EVAL_CODE', (
      'import json, os, sys, time; t = time.time(); time.sleep(3 if sys.argv[1].endswith("=2") '
      'else 0); json.dump({"start": t, "end": time.time(), "gpus": os.environ.get('
      '"CUDA_VISIBLE_DEVICES")}, open(os.path.join(sys.argv[1], "eval.json"), "w")); '
      'json.dump([], open(os.path.join(sys.argv[1], "k_extrapolation.json"), "w"))'))
  sd, logs = tmp_path / 'sd', []
  status = sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4, 8), str(sd), module='standin',
                            log=logs.append, cwd=ROOT, workers=2, worker_gpus=['3', '4'],
                            eval_ks=[1, 2])
  assert [s['status'] for s in status] == ['ok', 'ok', 'ok'], (status, logs)
  ev = json.loads((sd / 'n_pairs=2' / 'eval.json').read_text())
  assert ev['gpus'] == '3'
  assert float((sd / 'started_n_pairs=8').read_text()) < ev['end']  # not after it
  assert any(l.startswith('[3/3] n_pairs=8: running on worker 1 (') for l in logs)
  assert '  n_pairs=2: evaluated with K_eval=[1, 2]' in logs


def test_an_interrupted_sweep_stops_the_points_it_started(tmp_path, monkeypatch):
  _standin(tmp_path, monkeypatch, sleep={'n_pairs=2': 4.0, 'n_pairs=4': 4.0})
  sd = tmp_path / 'sd'
  real_sleep, raised = time.sleep, []

  def interrupt_once_both_run(s):  # the scheduler's wait, while both points train (once: the
    # time module is patched, and Popen.wait sleeps too)
    if not raised and all((sd / f'started_n_pairs={n}').exists() for n in (2, 4)):
      raised.append(1)
      raise KeyboardInterrupt
    real_sleep(s)

  monkeypatch.setattr(sweeps.time, 'sleep', interrupt_once_both_run)
  with pytest.raises(KeyboardInterrupt):
    sweeps.run_sweep('configs/kv_retrieval.py', _points(2, 4), str(sd), module='standin',
                     log=lambda _: None, cwd=ROOT, workers=2)
  monkeypatch.undo()
  time.sleep(6)
  for n in (2, 4):  # both were stopped, not left running
    assert not (sd / f'n_pairs={n}' / 'results.json').exists()


def test_a_sweep_stopped_by_sigterm_stops_its_points(tmp_path, monkeypatch):
  _standin(tmp_path, monkeypatch, sleep={'n_pairs=2': 5.0, 'n_pairs=4': 5.0})
  sd = tmp_path / 'sd'
  driver = subprocess.Popen([sys.executable, '-c', (
      'import sys; from gradmem_jax import sweeps; '
      'sweeps.run_sweep("configs/kv_retrieval.py", sweeps.Sweep("pts", [{"n_pairs": 2}, '
      f'{{"n_pairs": 4}}]), {str(sd)!r}, module="standin", log=lambda _: None, workers=2)')],
      cwd=ROOT)
  t = time.time()
  while not all((sd / f'started_n_pairs={n}').exists() for n in (2, 4)):
    assert time.time() - t < 60 and driver.poll() is None
    time.sleep(0.05)
  driver.terminate()
  assert driver.wait(timeout=60) != 0
  time.sleep(7)
  for n in (2, 4):
    assert not (sd / f'n_pairs={n}' / 'results.json').exists()
  # Under nohup (SIGHUP ignored) a lost terminal does not stop the sweep.
  sd = tmp_path / 'sd_nohup'
  driver = subprocess.Popen([sys.executable, '-c', (
      'import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); '
      'from gradmem_jax import sweeps; '
      'sweeps.run_sweep("configs/kv_retrieval.py", sweeps.Sweep("pts", [{"n_pairs": 2}]), '
      f'{str(sd)!r}, module="standin", log=lambda _: None)')], cwd=ROOT)
  t = time.time()
  while not (sd / 'started_n_pairs=2').exists():
    assert time.time() - t < 60 and driver.poll() is None
    time.sleep(0.05)
  driver.send_signal(signal.SIGHUP)
  assert driver.wait(timeout=60) == 0
  assert (sd / 'n_pairs=2' / 'results.json').exists()


def test_worker_slots_split_devices_and_refuse_bad_values():
  one = sweeps.worker_slots(1, env={'A': '1'})
  assert one == [({'A': '1'}, None)]  # the sequential sweep: unchanged
  shared = sweeps.worker_slots(2, env={})
  assert [e['XLA_PYTHON_CLIENT_MEM_FRACTION'] for e, _ in shared] == ['0.45', '0.45']
  if len(os.sched_getaffinity(0)) >= 2:  # pinned: the line says that this changes the numbers
    assert sweeps.describe_slots(shared).endswith('with as many CPUs on the same kind of machine')
  assert 'numbers' not in sweeps.describe_slots(one)
  assert 'CUDA_VISIBLE_DEVICES' not in shared[0][0]
  kept = sweeps.worker_slots(2, env={'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.3'})
  assert [e['XLA_PYTHON_CLIENT_MEM_FRACTION'] for e, _ in kept] == ['0.3', '0.3']
  mixed = sweeps.worker_slots(3, ['0', '0', '1+2'], env={})
  assert [e['CUDA_VISIBLE_DEVICES'] for e, _ in mixed] == ['0', '0', '1,2']
  assert [e.get('XLA_PYTHON_CLIENT_MEM_FRACTION') for e, _ in mixed] == ['0.45', '0.45', None]
  overlap = sweeps.worker_slots(3, ['0', '0+1', '1'], env={})  # GPU 0 and GPU 1 two workers each
  assert [e.get('XLA_PYTHON_CLIENT_MEM_FRACTION') for e, _ in overlap] == ['0.45'] * 3
  # indices among the GPUs this process sees
  mapped = sweeps.worker_slots(2, ['1', '0'], env={'CUDA_VISIBLE_DEVICES': '4,5'})
  assert [e['CUDA_VISIBLE_DEVICES'] for e, _ in mapped] == ['5', '4']
  with pytest.raises(ValueError, match=r"entry '2': this process sees 2 GPUs "
                                       r"\(CUDA_VISIBLE_DEVICES='4,5'\); allowed are indices 0-1"):
    sweeps.worker_slots(2, ['0', '2'], env={'CUDA_VISIBLE_DEVICES': '4,5'})
  with pytest.raises(ValueError, match=r"sees 0 GPUs \(CUDA_VISIBLE_DEVICES=''\); allowed are none"):
    sweeps.worker_slots(2, ['0', '1'], env={'CUDA_VISIBLE_DEVICES': ''})
  with pytest.raises(ValueError, match=r'workers=0: allowed are whole numbers >= 1'):
    sweeps.worker_slots(0)
  with pytest.raises(ValueError, match=r'one entry per worker .*workers=3, 2 entries'):
    sweeps.worker_slots(3, ['0', '1'])
  with pytest.raises(ValueError, match=r"worker_gpus entry 'gpu0': allowed are GPU indices"):
    sweeps.worker_slots(1, ['gpu0'])


def test_dry_run_prints_one_command_per_point(tmp_path, monkeypatch):
  monkeypatch.delenv(sweeps.XLA_CACHE_ENV, raising=False)  # the sweep's default cache, then
  out = _run(['experiments.sweep', f'--config={ROOT}/configs/kv_retrieval.py',
              f'--sweep={ROOT}/configs/sweeps/n_pairs.py:paper', f'--sweep_dir={tmp_path}',
              '--dry_run'])
  cmds = [l for l in out.splitlines() if 'experiments.train' in l]
  assert len(cmds) == 48 == len(sweeps.load_sweep(f'{ROOT}/configs/sweeps/n_pairs.py:paper').points)
  # every point shares the sweep's compilation cache
  assert all(c.startswith(f'{sweeps.XLA_CACHE_ENV}={tmp_path}/xla_cache python ') for c in cmds)
  assert len(set(cmds)) == 48
  assert all('--workdir=' in c and 'paper_n16' in c for c in cmds)
  assert not any(os.path.isdir(tmp_path / d) for d in os.listdir(tmp_path))  # nothing ran
  # --only: the points whose names match, with the sweep dir's curriculum sources kept.
  out = _run(['experiments.sweep', f'--sweep={ROOT}/configs/sweeps/claims.py:cpu',
              f'--sweep_dir={tmp_path / "c"}', '--dry_run', '--only=K=2,grad_mode=first.*seed=1$'])
  cmds = [l for l in out.splitlines() if 'experiments.train' in l]
  assert len(cmds) == 3  # N = 2, 4, 8 of one seed
  workdirs = [re.search(r'--workdir=(\S+)', c).group(1) for c in cmds]
  assert [os.path.basename(w).split(',')[0] for w in workdirs] == [
      'n_pairs=2', 'n_pairs=4', 'n_pairs=8']
  assert all(',K=2,grad_mode=first,' in w and w.endswith(',seed=1') for w in workdirs)
  assert sum('init_from=' in c for c in cmds) == 2  # N=4 from N=2, N=8 from N=4


def test_points_run_with_the_compilation_cache_asked_for(tmp_path, monkeypatch):
  # A stand-in for the training module: it records the cache directory it was given and fails
  # (so that every call launches it again).
  (tmp_path / 'envdump.py').write_text(
      'import os, sys\n'
      'wd = [a for a in sys.argv if a.startswith("--workdir=")][0].split("=", 1)[1]\n'
      f'open(os.path.join(wd, "env.txt"), "w").write(os.environ.get("{sweeps.XLA_CACHE_ENV}", '
      '"unset"))\nsys.exit(1)\n')
  monkeypatch.setenv('PYTHONPATH', str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  monkeypatch.setenv(sweeps.XLA_CACHE_ENV, '/from/the/environment')
  s = sweeps.Sweep('one', [{'n_pairs': 2}])
  sd = tmp_path / 'sd'

  def seen(cache):
    sweeps.run_sweep('configs/kv_retrieval.py', s, str(sd), module='envdump', log=lambda _: None,
                     cwd=ROOT, xla_cache_dir=cache)
    return (sd / 'n_pairs=2' / 'env.txt').read_text()

  assert seen(None) == '/from/the/environment'  # inherited as it is
  assert seen('') == 'unset'  # turned off
  assert seen(str(tmp_path / 'c')) == str(tmp_path / 'c')
  monkeypatch.chdir(tmp_path)
  assert seen('rel') == str(tmp_path / 'rel')  # made absolute: the point may run elsewhere
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert seen('~/xc') == str(tmp_path / 'home' / 'xc')
  assert seen('gs://bucket/xc') == 'gs://bucket/xc'  # a URL jax takes as it is
  assert seen(f'file://{tmp_path}/fx') == str(tmp_path / 'fx')  # one it does not: a local path

  def dry(cache):
    logs = []
    sweeps.run_sweep('configs/kv_retrieval.py', s, str(sd), dry_run=True, log=logs.append,
                     xla_cache_dir=cache)
    return logs[0]

  assert dry('rel').startswith(f'{sweeps.XLA_CACHE_ENV}={tmp_path / "rel"} python -m ')
  assert dry('').startswith(f'env -u {sweeps.XLA_CACHE_ENV} python -m ')  # off, wherever it runs
  assert dry(None).startswith('python -m ')


def test_a_failed_evaluation_of_a_finished_point_is_logged_and_the_sweep_goes_on(tmp_path,
                                                                                 monkeypatch):
  # A stand-in for the training module that finishes its point at once; the evaluation process
  # is one that fails.
  (tmp_path / 'finishes.py').write_text(
      'import json, os, sys\n'
      'wd = [a for a in sys.argv if a.startswith("--workdir=")][0].split("=", 1)[1]\n'
      'json.dump({"best": {"em": 0.5}, "wall_time_s": 1.0}, '
      'open(os.path.join(wd, "results.json"), "w"))\n')
  monkeypatch.setenv('PYTHONPATH', str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  monkeypatch.setattr(sweeps, '_EVAL_CODE', 'import sys; print("eval ran", sys.argv[1:]); '
                      'sys.exit(3)')
  s = sweeps.Sweep('two', [{'n_pairs': 2}, {'n_pairs': 4}])
  sd, logs = tmp_path / 'sd', []
  status = sweeps.run_sweep('configs/kv_retrieval.py', s, str(sd), module='finishes',
                            log=logs.append, cwd=ROOT, eval_ks=[1, 8])
  assert [x['status'] for x in status] == ['ok', 'ok']
  failed = [l for l in logs if 'K_eval evaluation failed (exit 3' in l]
  assert len(failed) == 2 and 'left for a later evaluation' in failed[0]
  assert logs.index(failed[0]) < logs.index(next(l for l in logs if l.startswith('[2/2]')))
  # the evaluation process got the point's absolute workdir and the K_eval values
  assert f"eval ran ['{sd / 'n_pairs=2'}', '1,8']" in (sd / 'n_pairs=2' / 'stdout.log').read_text()


def test_evaluating_the_points_skips_methods_without_test_time_k_and_reports_failures(
    tmp_path, monkeypatch):
  from configs import kv_retrieval
  from gradmem_jax.training import evaluate
  s = sweeps.Sweep('two', [{'method': 'full_context'}, {'method': 'gradmem'}])
  for p in s.points:  # finished points with their parameters, as a sweep leaves them
    wd = tmp_path / sweeps.slug(p)
    os.makedirs(wd / 'best' / '4')
    (wd / 'config.json').write_text(
        kv_retrieval.get_config(f'tiny,method={p["method"]}').to_json())
    (wd / 'results.json').write_text('{}')

  def evaluate_run(wd, ks):
    if 'full_context' in wd:  # its single-K evaluation would be thrown away: not run at all
      raise AssertionError('evaluated a method without test-time K')
    raise RuntimeError('out of memory')

  monkeypatch.setattr(evaluate, 'evaluate_run', evaluate_run)
  logs = []
  assert sweeps.evaluate_points(s, str(tmp_path), [1, 2], log=logs.append) == ['method=gradmem']
  assert logs == ['  method=full_context: not evaluated with K_eval, its method (full_context) has '
                  'no test-time K',
                  '  method=gradmem: K_eval evaluation failed: RuntimeError: out of memory']
  assert not list(tmp_path.glob('*/k_extrapolation.json'))


def test_a_program_loaded_from_the_cache_trains_as_the_compiled_one(tmp_path, monkeypatch):
  monkeypatch.delenv(sweeps.XLA_CACHE_ENV, raising=False)
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # tiny programs too
  (tmp_path / 'one.py').write_text(
      'from gradmem_jax.sweeps import Sweep\n'
      'def get_sweep(arg=None):\n'
      '  return Sweep("one", [dict(K=2)], base="tiny,max_steps=2")\n')
  args = ['experiments.sweep', f'--config={ROOT}/configs/kv_retrieval.py',
          f'--sweep={tmp_path / "one.py"}', '--report=false']
  a, b = tmp_path / 'a', tmp_path / 'b'
  _run(args + [f'--sweep_dir={a}'])  # compiles, and fills a/xla_cache
  cached = sorted(os.listdir(a / 'xla_cache'))
  assert any(n.startswith('jit_train_step-') for n in cached), cached
  monkeypatch.setenv('JAX_LOG_COMPILES', '1')  # jax then logs each cache hit
  _run(args + [f'--sweep_dir={b}', f'--xla_cache_dir={a / "xla_cache"}'])  # loads
  log = (b / 'K=2' / 'stdout.log').read_text()
  assert "Persistent compilation cache hit for 'jit_train_step'" in log, log[-3000:]
  assert sorted(os.listdir(a / 'xla_cache')) == cached  # nothing new: every program was found
  assert not (b / 'xla_cache').exists()

  def trained(d, slug):
    rows = [json.loads(l) for l in open(d / slug / 'metrics.jsonl')]
    return [{k: v for k, v in r.items() if 'time' not in k and not k.endswith('_s')}
            for r in rows]

  assert trained(a, 'K=2') == trained(b, 'K=2')


def test_only_selects_points_by_name():
  full = sweeps.load_sweep(f'{ROOT}/configs/sweeps/claims.py:cpu')
  part = sweeps.select(full, r'^n_pairs=[24],method=gradmem,K=2,grad_mode=first')
  assert [(p['n_pairs'], p['seed']) for p in part.points] == [(n, s) for s in (0, 1, 2)
                                                              for n in (2, 4)]
  assert part.init_from == full.init_from and part.name == full.name and part.base == full.base
  with pytest.raises(ValueError, match=r"--only='nope' matches none of the 72 points"):
    sweeps.select(full, 'nope')
  with pytest.raises(ValueError, match=r"--only='\(' is not a regular expression"):
    sweeps.select(full, '(')


@pytest.mark.parametrize('name', ['k_steps', 'n_pairs', 'inner_lr', 'grad_mode', 'memory_size'])
@pytest.mark.parametrize('variant', ['cpu', 'paper'])
def test_shipped_sweeps_build_valid_configs(name, variant):
  sweep = sweeps.load_sweep(f'{ROOT}/configs/sweeps/{name}.py:{variant}')
  assert sweep.points
  sweeps.validate_points(f'{ROOT}/configs/kv_retrieval.py', sweep)


def test_bad_sweep_point_fails_before_running(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text('from gradmem_jax.sweeps import Sweep\n'
                  'def get_sweep(arg=None):\n  return Sweep("bad", [{"K": -1}])\n')
  out = subprocess.run([sys.executable, '-m', 'experiments.sweep',
                        f'--config={ROOT}/configs/kv_retrieval.py', f'--sweep={path}',
                        f'--sweep_dir={tmp_path / "s"}'], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode != 0 and 'sweep point K=-1' in out.stderr
  good = tmp_path / 'good.py'
  good.write_text('from gradmem_jax.sweeps import Sweep\n'
                  'def get_sweep(arg=None):\n  return Sweep("good", [{"K": 1}], base="tiny")\n')
  for bad in ('1,-2', '1,two'):  # refused before anything runs, not after the sweep's training
    out = subprocess.run([sys.executable, '-m', 'experiments.sweep', f'--sweep={good}',
                          f'--sweep_dir={tmp_path / "s"}', f'--K_eval={bad}'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f'--K_eval={bad}: allowed are whole numbers >= 0' in out.stderr
  for bad, says in (('--workers=0', '--workers=0: allowed are whole numbers >= 1'),
                    ('--worker_gpus=0,cuda1', "--worker_gpus entry 'cuda1': allowed are GPU"),
                    ('--worker_gpus=0,1 --workers=3', 'one entry per worker is needed')):
    out = subprocess.run([sys.executable, '-m', 'experiments.sweep', f'--sweep={good}',
                          f'--sweep_dir={tmp_path / "s"}'] + bad.split(), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and says in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / 's').exists()
  # --worker_gpus alone: a worker per entry (the dry run shows the split)
  out = subprocess.run([sys.executable, '-m', 'experiments.sweep', f'--sweep={good}',
                        f'--sweep_dir={tmp_path / "d"}', '--dry_run', '--worker_gpus=0,1+2'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '# 2 workers: worker 0: CUDA_VISIBLE_DEVICES=0 ' in out.stdout
  assert 'worker 1: CUDA_VISIBLE_DEVICES=1,2 ' in out.stdout


def _fake_run(d, slug, overrides, em, token_acc, **fields):
  os.makedirs(d / slug)
  r = {'task': 'kv', 'n_pairs': 4, 'method': 'gradmem', 'K': 1, 'grad_mode': 'second',
       'num_memory': 8, 'inner_lr': 1.0, 'inner_optimizer': 'sgd',
       'identity_fields': ['task', 'n_pairs', 'method', 'K', 'grad_mode', 'num_memory',
                           'inner_lr', 'inner_optimizer'],
       'memory_floats': 512, 'steps': 100,
       'wall_time_s': 60.0, 'best': {'em': em, 'token_acc': token_acc, 'target_loss': 0.1},
       'final': {'em': em}}
  r.update(fields)
  json.dump(r, open(d / slug / 'results.json', 'w'))
  return overrides


def test_report_means_stds_and_figure(tmp_path):
  points = []
  for seed, (em, acc) in enumerate([(0.5, 0.7), (0.7, 0.9), (0.9, 0.95)]):
    points.append({'slug': f'K=1,seed={seed}',
                   'overrides': _fake_run(tmp_path, f'K=1,seed={seed}', {'K': 1, 'seed': seed},
                                          em, acc)})
  points.append({'slug': 'K=2,seed=0',
                 'overrides': _fake_run(tmp_path, 'K=2,seed=0', {'K': 2, 'seed': 0}, 1.0, 1.0, K=2)})
  json.dump({'name': 'fake', 'points': points}, open(tmp_path / 'sweep.json', 'w'))
  runs = sweeps.collect(str(tmp_path))
  out = report.make_report(runs, str(tmp_path / 'out'), figures=('em_vs:K', 'em_by_method'),
                           title='fake')
  rows = {r['K']: r for r in out['rows']}
  assert rows[1]['seeds'] == 3
  np.testing.assert_allclose(rows[1]['em_mean'], 0.7)
  np.testing.assert_allclose(rows[1]['em_std'], np.std([0.5, 0.7, 0.9]))
  np.testing.assert_allclose(rows[1]['token_acc_mean'], np.mean([0.7, 0.9, 0.95]))
  assert rows[2]['seeds'] == 1 and rows[2]['em_mean'] == 1.0
  assert '| 1 | 3 | 70.00 | 16.33 |' in out['table']
  for name in ('em_vs_K.png', 'em_by_method.png'):
    png = tmp_path / 'out' / name
    assert png.exists() and png.stat().st_size > 1000
  with pytest.raises(ValueError, match='unknown figure kind'):
    report.make_report(runs, str(tmp_path / 'out2'), figures=('em_vs_nothing',))
  csv_text = (tmp_path / 'out' / 'report.csv').read_text()
  assert csv_text.splitlines()[0].startswith('K,seeds,em_mean')


def test_archived_snapshots_take_the_latest_complete_step_and_spare_a_chain_its_source(tmp_path):
  chain = sweeps.Sweep('chain', [{'n_pairs': 2}, {'n_pairs': 4}, {'n_pairs': 8}], base='tiny',
                       init_from={'n_pairs=4': 'n_pairs=2', 'n_pairs=8': 'n_pairs=4'})
  sd, out = tmp_path / 'runs', tmp_path / 'archive'
  sweeps.write_manifest(str(sd), 'configs/kv_retrieval.py', chain)

  def step_dir(d, item, what, complete=True):  # the files of an orbax step (checkpoint.py)
    os.makedirs(d / item, exist_ok=True)
    os.makedirs(d / 'meta', exist_ok=True)
    (d / item / 'data').write_bytes(what)
    (d / '_CHECKPOINT_METADATA').write_text('{}')
    if complete:
      (d / 'commit_success.txt').write_text('done')

  def checkpoint(name, step, complete=True, what=b'x'):
    step_dir(sd / name / 'checkpoints' / str(step), 'state', what, complete)
    step_dir(sd / name / 'best' / str(step), 'params', what)
    for old in os.listdir(sd / name / 'best'):
      if old != str(step):
        shutil.rmtree(sd / name / 'best' / old)
    (sd / name / 'config.json').write_text(json.dumps({'train': {'max_steps': 100}}))

  os.makedirs(sd / 'n_pairs=2')
  (sd / 'n_pairs=2' / 'results.json').write_text('{}')  # finished, archived without params
  checkpoint('n_pairs=4', 50)
  checkpoint('n_pairs=4', 75, complete=False)  # being written: not a step to resume from
  os.makedirs(sd / 'n_pairs=8')  # started, no checkpoint yet: nothing to snapshot
  with pytest.raises(FileNotFoundError, match='archive the sweep dir there first'):
    sweeps.archive_unfinished(str(sd), str(out))
  with pytest.raises(FileNotFoundError, match='--sweep_dir .* has no sweep.json'):
    sweeps.archive_unfinished(str(tmp_path), str(out))
  sweeps.archive(str(sd), str(out), best='none')
  assert sweeps.archive_unfinished(str(sd), str(out)) == [('n_pairs=4', 50)]
  assert sweeps.unfinished_step(str(out / 'n_pairs=4')) == 50
  assert sorted(os.listdir(out / 'n_pairs=4' / 'checkpoints')) == ['50']
  assert not (out / 'n_pairs=8').exists()
  # Only a later step replaces a snapshot, and it replaces the earlier step's files.
  shutil.rmtree(sd / 'n_pairs=4' / 'checkpoints' / '50')
  checkpoint('n_pairs=4', 25, what=b'older')
  assert sweeps.archive_unfinished(str(sd), str(out)) == []
  # A committed step that is being deleted (orbax removes old steps in place) is not taken.
  checkpoint('n_pairs=4', 60)
  shutil.rmtree(sd / 'n_pairs=4' / 'checkpoints' / '60' / 'state')
  logs = []
  assert sweeps.archive_unfinished(str(sd), str(out), log=logs.append) == []
  assert 'its checkpoint changed while copied' in logs[0]
  assert sorted(os.listdir(out / 'n_pairs=4' / 'checkpoints')) == ['50']
  shutil.rmtree(sd / 'n_pairs=4' / 'checkpoints' / '60')
  checkpoint('n_pairs=4', 75, what=b'later')
  # best/ changing under the copy (the run replaced it): the point is skipped and its earlier
  # snapshot stays whole; the next archive takes the new step.
  real_copy = sweeps._copy_tree_atomic

  def racing_copy(src, dst):
    real_copy(src, dst)
    if dst.endswith('best'):
      shutil.rmtree(os.path.join(dst, '75', 'params'))  # as if deleted half way through

  logs = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sweeps, '_copy_tree_atomic', racing_copy)
    assert sweeps.archive_unfinished(str(sd), str(out), log=logs.append) == []
  assert 'not snapshotted' in logs[0] and 'the snapshot of step 50 stays' in logs[0]
  assert sweeps.unfinished_step(str(out / 'n_pairs=4')) == 50
  assert sorted(os.listdir(out / 'n_pairs=4' / 'checkpoints')) == ['50']
  assert json.load(open(out / 'n_pairs=4' / sweeps.UNFINISHED_MARKER))['max_steps'] == 100
  assert sweeps.archive_unfinished(str(sd), str(out)) == [('n_pairs=4', 75)]
  assert sorted(os.listdir(out / 'n_pairs=4' / 'checkpoints')) == ['75']
  assert (out / 'n_pairs=4' / 'checkpoints' / '75' / 'state' / 'data').read_bytes() == b'later'
  assert [(u['slug'], u['step']) for u in sweeps.in_progress(str(out))] == [('n_pairs=4', 75)]
  from gradmem_jax.training import checkpoint as ckpt_lib  # the JAX-free copy of its constant
  assert sweeps._COMMIT_MARKER == ckpt_lib.COMMIT_MARKER
  # A fresh machine: n_pairs=4 resumes from its snapshot, so n_pairs=2 (archived without
  # parameters) need not run again to start it; a live run of a point is never replaced.
  sd2 = tmp_path / 'runs2'
  logs = []
  assert sweeps.restore(str(out), str(sd2), chain, 'configs/kv_retrieval.py',
                        log=logs.append) == ['n_pairs=2']
  assert not logs
  assert sweeps.restore_unfinished(str(out), str(sd2), chain, log=logs.append) == [
      ('n_pairs=4', 75)]
  assert sorted(os.listdir(sd2 / 'n_pairs=4')) == ['best', 'checkpoints', 'config.json']
  # ... and the sweep starts it (here: a module that does not exist, so 'failed' means started),
  # not blocked on its source's missing parameters.
  status = {s['slug']: s['status'] for s in sweeps.run_sweep(
      'configs/kv_retrieval.py', chain, str(sd2), module='experiments.no_such_module',
      log=lambda _: None, cwd=ROOT)}
  assert status['n_pairs=2'] == 'skipped' and status['n_pairs=4'] == 'failed (exit 1)', status
  assert sweeps.restore_unfinished(str(out), str(tmp_path / 'runs3'), chain) == [
      ('n_pairs=4', 75)]
  (sd2 / 'n_pairs=4' / 'config.json').write_text('live')
  assert sweeps.restore_unfinished(str(out), str(sd2), chain) == []
  assert (sd2 / 'n_pairs=4' / 'config.json').read_text() == 'live'
  # Without the snapshot (as a crash before its marker leaves it), the chain's source would have
  # to run again first, and no report says the point resumes.
  os.remove(out / 'n_pairs=4' / sweeps.UNFINISHED_MARKER)
  assert sweeps.in_progress(str(out)) == []
  logs = []
  assert sweeps.restore(str(out), str(tmp_path / 'runs4'), chain, 'configs/kv_retrieval.py',
                        log=logs.append) == []
  assert 'n_pairs=2: not restored' in logs[0]


def test_archive_keeps_what_the_reports_read_and_outlives_the_run_dirs(tmp_path):
  # A session's run directories (with checkpoints) do not survive its machine; the archive keeps
  # the small files the reports read, and reads back exactly as the sweep dir did.
  def fake_sweep(sd, points, finished, init_from):
    s = sweeps.Sweep('claims', points, base='tiny', init_from=init_from)
    sweeps.write_manifest(str(sd), 'configs/kv_retrieval.py', s)
    for p in points:
      wd = sd / sweeps.slug(p)
      os.makedirs(wd / 'checkpoints' / '100')
      (wd / 'checkpoints' / '100' / 'params').write_bytes(b'\0' * 1000)
      (wd / 'stdout.log').write_text('step 1\n')
      if sweeps.slug(p) in finished:
        (wd / 'config.json').write_text(json.dumps({'K': p['K']}))
        (wd / 'metrics.jsonl').write_text(json.dumps({'step': 100, 'val/em': 0.5}) + '\n')
        (wd / 'results.json').write_text(json.dumps({'K': p['K'], 'best': {'em': 0.1 * p['K']}}))
        (wd / 'k_extrapolation.json').write_text(json.dumps([{'K_eval': 1, 'em': 0.2}]))
  sd, out = tmp_path / 'runs', tmp_path / 'archive'
  fake_sweep(sd, [dict(K=1, seed=0), dict(K=2, seed=0), dict(K=5, seed=0)],
             finished={'K=1,seed=0', 'K=2,seed=0'}, init_from={'K=2,seed=0': 'K=1,seed=0'})
  assert sweeps.archive(str(sd), str(out)) == ['K=1,seed=0', 'K=2,seed=0']
  assert sorted(os.listdir(out)) == ['K=1,seed=0', 'K=2,seed=0', 'sweep.json']  # K=5 unfinished
  assert sorted(os.listdir(out / 'K=1,seed=0')) == [  # everything a report reads, no checkpoints
      'config.json', 'k_extrapolation.json', 'metrics.jsonl', 'results.json', 'stdout.log']
  expected = sweeps.collect(str(sd))
  shutil.rmtree(sd)  # the machine is gone
  assert sweeps.collect(str(out)) == expected and len(expected) == 2
  # The report command reads the archive as a sweep dir: a row per point with its best EM.
  table = _run(['experiments.report', f'--sweep_dir={out}']).splitlines()
  assert table[0].startswith('| method | seeds | EM (%) |'), table[:4]
  assert sorted(row.split('|')[3].strip() for row in table[2:4]) == ['10.00', '20.00']
  assert (out / 'K=1,seed=0' / 'metrics.jsonl').read_text().startswith('{"step": 100')
  # A later session's sweep dir with another point (and its own copy of one, without K
  # extrapolation) adds to the archive; the curriculum sources merge.
  sd2 = tmp_path / 'runs2'
  fake_sweep(sd2, [dict(K=2, seed=0), dict(K=1, seed=1), dict(K=2, seed=1)],
             finished={'K=2,seed=0', 'K=1,seed=1'}, init_from={'K=2,seed=1': 'K=1,seed=1'})
  (sd2 / 'K=2,seed=0' / 'results.json').write_text(json.dumps({'K': 2, 'best': {'em': 0.9}}))
  os.remove(sd2 / 'K=2,seed=0' / 'k_extrapolation.json')
  sweeps.archive(str(sd2), str(out))
  rows = {r['slug']: r for r in sweeps.collect(str(out))}
  assert sorted(rows) == ['K=1,seed=0', 'K=1,seed=1', 'K=2,seed=0']
  assert rows['K=2,seed=0']['best']['em'] == 0.9  # the later sweep dir's copy
  assert 'k_extrapolation' not in rows['K=2,seed=0']  # not the older copy's file beside it
  assert rows['K=1,seed=0']['overrides'] == {'K': 1, 'seed': 0}  # kept from the first archive
  assert rows['K=1,seed=1']['overrides'] == {'K': 1, 'seed': 1}
  assert json.load(open(out / 'sweep.json'))['init_from'] == {
      'K=2,seed=0': 'K=1,seed=0', 'K=2,seed=1': 'K=1,seed=1'}
  # Another sweep's results are refused before anything is copied, as is a sweep dir without a
  # manifest to check, and the sweep dir itself (also through a link).
  other = tmp_path / 'other'
  sweeps.write_manifest(str(other), 'configs/kv_retrieval.py',
                        sweeps.Sweep('tune', [dict(K=3)], base='tiny'))
  os.makedirs(other / 'K=3')
  (other / 'K=3' / 'results.json').write_text('{}')
  with pytest.raises(ValueError, match="holds sweep 'claims'"):
    sweeps.archive(str(other), str(out))
  os.remove(other / 'sweep.json')
  with pytest.raises(ValueError, match='has no sweep.json'):
    sweeps.archive(str(other), str(out))
  assert not (out / 'K=3').exists()
  os.symlink(sd2, tmp_path / 'link')
  with pytest.raises(ValueError, match='is the sweep dir itself'):
    sweeps.archive(str(sd2), str(tmp_path / 'link'))
  with pytest.raises(FileNotFoundError, match='no such directory'):
    sweeps.archive(str(tmp_path / 'nope'), str(out))
  # The command line does the same.
  printed = _run(['experiments.archive', f'--sweep_dir={sd2}', f'--out={tmp_path / "a2"}'])
  assert 'archived 2 finished points' in printed
  assert sweeps.collect(str(tmp_path / 'a2')) == sweeps.collect(str(sd2))
