"""The real runner: smoke run, kill-and-resume determinism, init_from, config errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import kv_retrieval
from gradmem_jax import report, sweeps
from gradmem_jax.training import build_experiment, train_and_evaluate
from gradmem_jax.training import evaluate as evaluate_lib
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training import abstract_state
from tests.conftest import forbid_random_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, config):
  exp = build_experiment(config)
  abstract, _ = abstract_state(exp)
  params, meta = load_params(os.path.join(workdir, 'checkpoints'), abstract['params'])
  return params, meta


def _abstract_state(config):
  return abstract_state(build_experiment(config))[0]


def _abstract_params(config):
  return _abstract_state(config)['params']


def test_train_and_evaluate_smoke(tmp_path):
  config = kv_retrieval.get_config('tiny')
  results = train_and_evaluate(config, str(tmp_path))
  assert results['steps'] == 6
  for name in ('config.json', 'metrics.jsonl', 'results.json'):
    assert (tmp_path / name).exists()
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'tensorboard'))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows if 'loss' in r] == [1, 2, 3, 4, 5, 6]
  assert any('val/em' in r for r in rows)
  # Where it ran, for comparing runs across machines (one record per session).
  from gradmem_jax import environment
  (env,) = environment.read(str(tmp_path))
  assert env['start_step'] == 0 and env['platform'] == 'cpu' and env['device_count'] == 1
  assert env['packages']['jax'] == jax.__version__ and env['python'] == sys.version.split()[0]
  assert set(env['cpu_isa']) <= set(environment.ISA_FLAGS)
  assert env['git_commit'] is None or len(env['git_commit']) == 40
  assert results['environment'] == env
  assert environment.machine(env).startswith(env['cpu_model'] or 'unknown CPU')
  assert environment.machine({'platform': 'gpu', 'device_count': 8, 'device_kind': 'H100',
                              'xla_flags': '--x=1'}) == '8 x H100; XLA_FLAGS=--x=1'
  assert environment.machine({'platform': 'cpu', 'cpu_model': 'EPYC', 'cpus_usable': 1,
                              'cpu_isa': ['avx', 'avx2', 'avx512f']}) == 'EPYC (avx512f), 1 CPU'
  assert env['cpus_usable'] == len(os.sched_getaffinity(0))
  # Started again once finished, it trains nothing: no session is added, the finishing one stays.
  again = train_and_evaluate(config, str(tmp_path))
  assert environment.read(str(tmp_path)) == [env] and again['environment'] == env
  saved = json.load(open(tmp_path / 'results.json'))
  assert saved['final']['token_acc'] >= 0 and saved['memory_floats'] == 2 * 16
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  # evaluate can pick a kept checkpoint by step.
  rows = evaluate_lib.evaluate_run(str(tmp_path), [1], step='3')
  assert rows[0]['checkpoint_step'] == 3
  # Rerunning a finished workdir does not train again.
  again = train_and_evaluate(config, str(tmp_path))
  assert again['steps'] == 6 and again['stop_reason'] == 'already finished'


def test_cpu_info_reads_model_and_isa_flags(tmp_path):
  from gradmem_jax import environment
  x86 = tmp_path / 'x86'
  x86.write_text('processor\t: 0\nmodel name\t: AMD EPYC 9B45\nflags\t\t: fpu sse4_2 avx avx2 '
                 'fma avx512f avx512bw\n\nprocessor\t: 1\nmodel name\t: other\nflags\t: sse4_2\n')
  assert environment.cpu_info(str(x86)) == ('AMD EPYC 9B45',
                                            ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f'])
  arm = tmp_path / 'arm'
  arm.write_text('processor\t: 0\nFeatures\t: fp asimd sve\n')
  model, isa = environment.cpu_info(str(arm))
  assert isa == ['asimd', 'sve']
  assert environment.cpu_info(str(tmp_path / 'none'))[1] == []


def test_max_steps_zero_evaluates_the_initial_parameters(tmp_path):
  # Zero-shot numbers (a pretrained model with the context in its input, say) come from the same
  # runner and evaluators as the trained runs: max_steps=0 evaluates and trains nothing.
  config = kv_retrieval.get_config('tiny,max_steps=0')
  results = train_and_evaluate(config, str(tmp_path))
  assert results['steps'] == 0 and results['stop_reason'] == 'evaluation only (max_steps=0)'
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert not any('loss' in r for r in rows) and 'final/em' in rows[-1]
  assert results['final']['target_loss'] > 0
  init = evaluate_lib.evaluate_run(str(tmp_path), [config.memory.K])[0]
  assert init['checkpoint_step'] == 0 and init['em'] == results['final']['em']


def test_init_from_copies_parameters(tmp_path, monkeypatch):
  src = tmp_path / 'src'
  config = kv_retrieval.get_config('tiny')
  train_and_evaluate(config, str(src))
  config2 = kv_retrieval.get_config('tiny,max_steps=0,n_pairs=3')
  config2.train.init_from = str(src)
  forbid_random_init(monkeypatch)
  out = train_and_evaluate(config2, str(tmp_path / 'dst'))
  assert out['steps'] == 0
  abstract, _ = abstract_state(build_experiment(config))
  best, _ = load_params(str(src), abstract['params'])  # the rule init_from uses: best/ first
  dst, _ = _params(tmp_path / 'dst', config2)
  for a, b in zip(jax.tree_util.tree_leaves(best), jax.tree_util.tree_leaves(dst)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('source,where', [('method=full_context,m=0', ''),
                                          ('lr=1e-2', 'checkpoints')])
def test_init_from_part_backbone_takes_only_the_backbone(tmp_path, monkeypatch, source, where):
  """The backbone of another run (a full-context one, or a GradMem one read from its resumable
  checkpoints) under GradMem: the backbone is the source's; the memory parameters are this run's
  own, built on that backbone (the write head copies its output embedding), never the source's."""
  src = tmp_path / 'src'
  src_config = kv_retrieval.get_config(f'tiny,{source},max_steps=3')
  train_and_evaluate(src_config, str(src))
  src_params, _ = load_params(str(src / where) if where else str(src),
                              abstract_state(build_experiment(src_config))[0]['params'])
  config = kv_retrieval.get_config('tiny,max_steps=0')
  config.train.init_from = str(src / where) if where else str(src)
  config.train.init_from_part = 'backbone'
  with monkeypatch.context() as m:
    forbid_random_init(m)
    assert train_and_evaluate(config, str(tmp_path / 'dst'))['steps'] == 0
  fresh = tmp_path / 'fresh'
  train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=0'), str(fresh))
  dst, _ = _params(tmp_path / 'dst', config)
  ref, _ = _params(fresh, config)
  leaves = lambda t: [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
  for a, b in zip(leaves(src_params['backbone']), leaves(dst['backbone'])):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(leaves(ref['backbone']),
                                                        leaves(dst['backbone'])))
  exp = build_experiment(config)
  np.testing.assert_array_equal(np.asarray(dst['memory']['write_head']),
                                np.asarray(exp.backbone.output_embedding(src_params['backbone'])))
  np.testing.assert_array_equal(np.asarray(dst['memory']['mem_init']),
                                np.asarray(ref['memory']['mem_init']))
  if 'mem_init' in src_params['memory']:  # the source's trained memory is not taken
    assert not np.array_equal(np.asarray(dst['memory']['mem_init']),
                              np.asarray(src_params['memory']['mem_init']))


@pytest.mark.parametrize('override,match', [
    ("init_from_part='memory'", r"train.init_from_part='memory'.*'backbone'"),
    ("init_from_part='backbone'", r'needs train.init_from'),
    ('other_model', r'backbone/layers_1/.*missing from the checkpoint'),
])
def test_init_from_part_errors(tmp_path, override, match):
  src = tmp_path / 'src'
  train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=3'), str(src))
  config = kv_retrieval.get_config('tiny,max_steps=0')
  if override == 'other_model':
    config = kv_retrieval.get_config('tiny,max_steps=0,model.num_layers=3')
    config.train.init_from, config.train.init_from_part = str(src), 'backbone'
  else:
    config.train.init_from_part = override.split('=')[1].strip("'")
    with pytest.raises(ValueError, match=match):  # refused when the config is built, too
      kv_retrieval.get_config('tiny,train.init_from_part=' + config.train.init_from_part)
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(config, str(tmp_path / 'dst'))


def test_init_from_mismatched_model_errors(tmp_path):
  src = tmp_path / 'src'
  train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=3'), str(src))
  config = kv_retrieval.get_config('tiny,m=3')
  config.train.init_from = str(src)
  with pytest.raises(ValueError, match='mem_init'):
    train_and_evaluate(config, str(tmp_path / 'dst'))
  # Resuming the workdir itself with another model size fails too, and leaves the run's own
  # config.json as it was (evaluate reads it).
  before = (src / 'config.json').read_text()
  with pytest.raises(ValueError, match='mem_init'):
    train_and_evaluate(kv_retrieval.get_config('tiny,m=3,max_steps=6'), str(src))
  assert (src / 'config.json').read_text() == before
  assert json.loads(before)['memory']['num_memory'] == 2
  assert not (src / 'config.prev.json').exists()


@pytest.mark.parametrize('arg,match', [
    ('tiny,K=-1', 'memory.K'),
    ('tiny,nonsense=3', "unknown config key 'nonsense'"),
    ('tiny,optim.lrr=3', "unknown config key 'optim.lrr'"),
    ('tiny,K=two', "K='two': expected a value of type int"),
    ('tiny,inner_lr=fast', 'inner_lr'),
    ('tiny,grad_mode=third', 'memory.grad_mode'),
    ('tiny,memory.unroll_inner=maybe', 'memory.unroll_inner'),
    ('tiny,n_pairs=0', 'data.n_pairs'),
    ('no_such_preset', "unknown preset 'no_such_preset'"),
    ('tiny,optim.micro_batch_size=3', 'optim.micro_batch_size'),
])
def test_bad_overrides_fail_before_compute(arg, match):
  with pytest.raises(ValueError, match=match):
    kv_retrieval.get_config(arg)


def test_overrides_and_presets_apply():
  c = kv_retrieval.get_config('paper_n16,K=5,inner_lr=0.08,optim.warmup_steps=7')
  assert (c.data.n_pairs, c.memory.K, c.memory.inner_lr, c.optim.warmup_steps) == (16, 5, 0.08, 7)
  assert c.model.hidden_size == 128 and c.optim.lr == 1e-4


def test_a_preset_written_as_key_value_applies_in_order():
  # Sweep points are key=value only: `preset=NAME` is the bare word NAME, applied in its place.
  assert kv_retrieval.get_config('tiny,preset=mamba').to_dict() == \
      kv_retrieval.get_config('tiny,mamba').to_dict()
  c = kv_retrieval.get_config('preset=paper_n16,preset=rmt,K=3')
  assert c.to_dict() == kv_retrieval.get_config('paper_n16,rmt,K=3').to_dict()
  # In order: rmt after paper_n16 keeps its memory projection (paper_n16 after rmt drops it).
  assert (c.data.n_pairs, c.memory.method, c.memory.K, c.memory.mem_proj) == (16, 'rmt', 3, 'proj')
  assert kv_retrieval.get_config('preset=rmt,preset=paper_n16').memory.mem_proj == 'none'
  with pytest.raises(ValueError, match="unknown preset 'nope'"):
    kv_retrieval.get_config('preset=nope')


def test_command_line_runs_and_rejects_bad_override(tmp_path):
  cmd = [sys.executable, '-m', 'experiments.kv_retrieval',
         f'--config={ROOT}/configs/kv_retrieval.py:tiny,K=-2', f'--workdir={tmp_path}']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and 'memory.K' in out.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_object_store_workdir_is_refused_with_a_clear_error():
  with pytest.raises(ValueError, match='workdir=.gs://bucket/run.*FUSE'):
    train_and_evaluate(kv_retrieval.get_config('tiny'), 'gs://bucket/run')


def test_help_lists_config_workdir_presets_and_aliases():
  out = subprocess.run([sys.executable, '-m', 'experiments.kv_retrieval', '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  text = out.stdout + out.stderr
  for word in ('--config', '--workdir', 'tiny', 'paper_n16', 'first_order', 'inner_lr=memory.inner_lr',
               'steps=train.max_steps'):
    assert word in text, word


def test_evaluate_step_resolves_kept_checkpoints(tmp_path):
  for d in ('checkpoints/3', 'checkpoints/6', 'best/6'):
    (tmp_path / d).mkdir(parents=True)
  wd = str(tmp_path)
  r = lambda *a: evaluate_lib.resolve_checkpoint(wd, *a)
  assert r(None, None) == wd
  assert r(None, '3') == os.path.join(wd, 'checkpoints', '3')
  assert r(None, 'best') == os.path.join(wd, 'best')
  assert r(None, 'latest') == os.path.join(wd, 'checkpoints')
  assert r(os.path.join(wd, 'best'), '6') == os.path.join(wd, 'best', '6')
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 4 .*'checkpoints': \[3, 6\]"):
    r(None, '4')
  with pytest.raises(ValueError, match='--step'):
    r(None, 'newest')


def test_report_prints_a_dash_for_the_std_of_one_seed():
  run = lambda seed, em: {'method': 'gradmem', 'K': 1, 'seed': seed, 'steps': 6,
                          'wall_time_s': 60.0, 'identity_fields': ['method', 'K'],
                          'best': {'em': em, 'token_acc': em}}
  one = report.aggregate([run(0, 0.5)])
  assert one[0]['em_std'] is None
  table = report.markdown_table(one, ['method', 'seeds', 'em_mean', 'em_std'])
  assert table.splitlines()[-1] == '| gradmem | 1 | 50.00 | - |'
  two = report.aggregate([run(0, 0.5), run(1, 0.7)])
  table = report.markdown_table(two, ['method', 'seeds', 'em_mean', 'em_std'])
  assert table.splitlines()[-1] == '| gradmem | 2 | 60.00 | 10.00 |'


@pytest.mark.parametrize('steps', [6, 7])
def test_user_config_args_beat_the_sweep_base(steps):
  """The cpu sweeps' base says max_steps=2000; the user's `:tiny,steps=N` must win."""
  sweep = sweeps.load_sweep(f'{ROOT}/configs/sweeps/k_steps.py:cpu')
  assert 'max_steps=2000' in sweep.base
  spec = f'{ROOT}/configs/kv_retrieval.py:tiny,steps={steps}'
  sweeps.validate_points(spec, sweep)
  for point in sweep.points:
    c = kv_retrieval.get_config(sweeps.config_arg(spec, sweep, point).partition(':')[2])
    assert c.train.max_steps == steps and c.memory.K == point['K']
    assert c.model.hidden_size == 16 and c.train.eval_every == 500  # tiny, then the base's rest


def test_resume_sets_aside_a_best_checkpoint_from_the_lost_part_of_the_run(tmp_path, capsys):
  import shutil
  from gradmem_jax.training.checkpoint import Checkpointer
  config = kv_retrieval.get_config('tiny')
  train_and_evaluate(config, str(tmp_path))
  params, _ = _params(tmp_path, config)
  # As if the run had saved a best checkpoint at step 99 and died before its resumable one, and
  # the resumable checkpoint at step 6 had never been written.
  ck = Checkpointer(str(tmp_path), 2)
  ck.save_best(99, params, {'step': 99})
  ck.close()
  shutil.rmtree(tmp_path / 'checkpoints' / '6')
  # As if the first session had run on another machine: the resume says it will not repeat it.
  from gradmem_jax import environment
  (first,) = environment.read(str(tmp_path))
  (tmp_path / environment.ENVIRONMENT_FILE).write_text(json.dumps({**first, 'cpus_usable': 64}))
  capsys.readouterr()
  out = train_and_evaluate(config, str(tmp_path))
  assert re.search(r'warning: resuming at step 3 elsewhere than the last session ran \(.*64 CPUs',
                   capsys.readouterr().out)
  assert out['steps'] == 6
  assert not (tmp_path / 'best' / '99').exists() and (tmp_path / 'best.lost' / '99').exists()


def test_resume_mends_a_best_record_whose_parameters_best_lacks(tmp_path, capsys):
  """best/ and the best record part when a run stops (or is snapshotted) between a step's
  checkpoint and its best save (two asynchronous saves), or when best/ held a newer step that
  the resume set aside. The resume saves the record's parameters again from a checkpoint of
  that step; if none is kept, the record starts again from what best/ holds."""
  import shutil
  from gradmem_jax.training.checkpoint import Checkpointer
  from gradmem_jax.training.train import params_checksum
  config = kv_retrieval.get_config('tiny')
  config.train.max_steps = 3
  w = os.path.relpath(tmp_path)  # relative, as sweeps give workdirs
  assert train_and_evaluate(config, w)['best_step'] == 3  # the first evaluation is the best
  ckpt_params = lambda s: load_params(os.path.join(w, 'checkpoints', str(s)),
                                      _abstract_params(config))[0]
  best_params = lambda s: load_params(os.path.join(w, 'best', str(s)),
                                      _abstract_params(config))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                jax.tree_util.tree_leaves(b)))

  # 1. Stopped after checkpoints/3 and before best/3: saved again from the resumed checkpoint.
  shutil.rmtree(tmp_path / 'best' / '3')
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert 'best/ lacked the best step so far (3' in capsys.readouterr().out
  params, meta = best_params(3)
  assert out['best_step'] == 3 and meta['token_acc'] == out['best']['token_acc']
  assert same(params, ckpt_params(3))

  # 2. The record names step 3, best/ lacks it, checkpoints/3 is kept: saved from there.
  config.train.max_steps = 6
  train_and_evaluate(config, w)

  def set_record(best_step, best):
    ck = Checkpointer(w, 2)
    state, meta = ck.restore_latest(_abstract_state(config))
    ck.close()
    shutil.rmtree(tmp_path / 'checkpoints' / '6')
    ck = Checkpointer(w, 2)
    ck.save(6, state, {**meta, 'best_step': best_step, 'best_token_acc': best['token_acc'],
                       'best': best, 'best_params_checksum': 0.0})  # the mend recomputes it
    ck.close()

  record = dict(out['best'], token_acc=0.75)
  set_record(3, record)
  for d in (tmp_path / 'best').iterdir():
    shutil.rmtree(d)
  ck = Checkpointer(w, 2)  # best/ holds an older best (step 1): the mend replaces it
  ck.save_best(1, ckpt_params(3), {'step': 1, 'token_acc': 0.5})
  ck.close()
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert 'saved it again from checkpoints/3' in capsys.readouterr().out
  params, meta = best_params(3)
  assert out['best_step'] == 3 and out['best']['token_acc'] == meta['token_acc'] == 0.75
  assert same(params, ckpt_params(3)) and sorted(os.listdir(tmp_path / 'best')) == ['3']
  assert out['best_params_checksum'] == params_checksum(params)

  # 3. The record names step 5, kept nowhere: it starts again from what best/ holds (step 3).
  set_record(5, dict(record, token_acc=0.9))
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert re.search(r'warning: best/ lacks the best step so far \(step 5, token acc 0\.9000\); no '
                   r'checkpoint of that step is kept: .*starts again from best/3',
                   capsys.readouterr().out)
  assert out['best_step'] == 3 and out['best']['token_acc'] == 0.75
  assert out['best_params_checksum'] == params_checksum(params)
  # ... as when best/ holds a later step than the record (no run makes that; a hand-made mix)
  set_record(1, dict(record, token_acc=0.9))
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert "(step 1, token acc 0.9000); it holds step 3, later than the record's" in \
      capsys.readouterr().out
  assert out['best_step'] == 3 and out['best']['token_acc'] == 0.75

  # 4. The record names step 3, whose checkpoint is damaged: the warning says so.
  set_record(3, dict(record, token_acc=0.9))
  shutil.rmtree(tmp_path / 'best' / '3')
  ck = Checkpointer(w, 2)
  ck.save_best(1, params, {'step': 1, 'token_acc': 0.5})
  ck.close()
  os.remove(tmp_path / 'checkpoints' / '3' / 'commit_success.txt')
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert re.search(r'checkpoints/3 is damaged: the commit marker .* starts again from best/1',
                   capsys.readouterr().out)
  assert out['best_step'] == 1 and out['best']['token_acc'] == 0.5

  # 5. ... and with best/ damaged or empty, from the next evaluation (none: the run is finished).
  set_record(3, dict(record, token_acc=0.9))
  os.remove(tmp_path / 'best' / '1' / 'commit_success.txt')
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert re.search(r'checkpoints/3 is damaged: .*; best/1 could not be restored: .*best/1 is '
                   r'damaged: the commit marker .*starts again at the next evaluation',
                   capsys.readouterr().out)
  assert out['best_step'] == -1
  set_record(3, dict(record, token_acc=0.9))
  shutil.rmtree(tmp_path / 'best' / '1')
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert 'starts again at the next evaluation' in capsys.readouterr().out
  assert out['best_step'] == -1 and out['best'] == out['final']  # not the stale record
  assert out['best_params_checksum'] is None

  # 6. checkpoints/3 whole on disk but its data garbled: its restore fails, the record restarts.
  (tmp_path / 'checkpoints' / '3' / 'commit_success.txt').write_text('ok')
  for f in (tmp_path / 'checkpoints' / '3' / 'state' / 'ocdbt.process_0' / 'd').iterdir():
    f.write_bytes(b'garbled')
  set_record(3, dict(record, token_acc=0.9))
  capsys.readouterr()
  out = train_and_evaluate(config, w)
  assert re.search(r'checkpoints/3 could not be restored: .*starts again at the next evaluation',
                   capsys.readouterr().out)
  assert out['best_step'] == -1


def test_a_curriculum_run_names_the_parameters_it_grew_from(tmp_path, monkeypatch):
  """results.json keeps the checksum of the best parameters (best/) and, for a run started from
  another (train.init_from), that run's path, step and the checksum of what it loaded: equal to
  the source's best checksum, so a report can check a chain (claims.lineage_lines). Workdirs
  given as relative paths, as sweeps give them."""
  import pathlib
  from gradmem_jax import claims
  from gradmem_jax.training.train import params_checksum
  monkeypatch.chdir(tmp_path)
  src_dir, dst_dir = pathlib.Path('n_pairs=2'), pathlib.Path('n_pairs=4')
  config = kv_retrieval.get_config('tiny')
  config.train.max_steps = 3
  src = train_and_evaluate(config, str(src_dir))
  assert src['init_from'] is None
  best, meta = load_params(str(src_dir / 'best'), _abstract_params(config))
  assert meta['step'] == src['best_step'] and src['best_params_checksum'] == params_checksum(best)
  config.data.n_pairs = 4
  config.train.init_from = str(src_dir)
  dst = train_and_evaluate(config, str(dst_dir))
  assert dst['init_from'] == {'path': str(tmp_path / src_dir), 'part': None,
                              'step': src['best_step'],
                              'params_checksum': src['best_params_checksum']}
  # A resume keeps it (the checkpoint's meta), and the chain checks out in a report.
  config.train.max_steps = 6
  assert train_and_evaluate(config, str(dst_dir))['init_from'] == dst['init_from']
  lines = claims.lineage_lines(sweeps.collect('.'))
  assert lines[0].startswith('Curriculum chains: 1 run grew from the best parameters of the run '
                             'shown for their source; 0 from other parameters; 0 not checked')


def test_best_mend_follows_process_0_and_a_restore_failing_anywhere(monkeypatch):
  """With several processes the mend's choice is process 0's (broadcast), and a restore counts
  as done only if it worked on every process (allgather); faked here on one process."""
  from jax.experimental import multihost_utils
  from gradmem_jax.training import train as train_lib
  from gradmem_jax.training.checkpoint import DamagedCheckpointError

  class FakeCkpt:
    workdir = '/nonexistent'
    def best_steps(self):
      return [3]  # this process sees the record's step in best/: nothing to mend
    def restore_best(self, step, abstract):
      return {'w': np.ones(2)}, {'step': step, 'token_acc': 0.5}

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  meta = {'best_step': 3, 'best_token_acc': 0.9, 'best': {'token_acc': 0.9}}
  state = {'step': 6, 'params': {'w': np.zeros(2)}}
  said = []
  # Process 0 saw otherwise: best/ holding step 1 only ('best'). This process follows it.
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all',
                      lambda x: np.array([train_lib._MEND_PLANS.index('best'), 1]))
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.array([1, 1]))
  out = train_lib._mend_best(FakeCkpt(), state, dict(meta), {'params': None}, said.append)
  assert out['best_step'] == 1 and out['best_token_acc'] == 0.5 and 'best/1' in said[-1]
  # The restore worked here and failed on the other process: both take the next choice.
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.array([1, 0]))
  out = train_lib._mend_best(FakeCkpt(), state, dict(meta), {'params': None}, said.append)
  assert out['best_step'] == -1 and 'failed on another process' in said[-1]
  # ... and a failure here with success elsewhere is a failure for all.
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.array([0, 1]))
  def bad():
    raise DamagedCheckpointError('garbled')
  assert train_lib._attempt(bad)[1] is not None
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.array([1, 1]))
  assert train_lib._attempt(lambda: 5) == (5, None)
