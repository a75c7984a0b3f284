"""gradmem_jax.babi_curriculum (experiments.babi_curriculum_table): the bAbI curriculum sweeps'
table (stages, test evaluation)."""
import json
import os

import pytest

from gradmem_jax import babi_curriculum as bct


def _sweep(tmp_path, task=2, finished=('gradmem',), name=None):
  """A curriculum sweep directory as experiments.sweep writes it: every point in sweep.json,
  results.json for the finished methods' stages (GradMem with K=2, to see K passed on)."""
  d = tmp_path / (name or f'qa{task}')
  points = []
  for method in ('gradmem', 'full_context'):
    for cut, minutes, em in ((2, 1.0, 0.99), (4, 2.0, 0.93), (0, 3.0, 0.6)):
      o = {'task_id': task, 'method': method, 'max_story_sentences': cut}
      if method == 'gradmem':
        o['K'] = 2
      slug = f'task_id={task},method={method},max_story_sentences={cut}'
      points.append({'slug': slug, 'overrides': o})
      if method in finished:
        os.makedirs(d / slug)
        res = {'K': o.get('K', 1), 'wall_time_s': 60 * minutes, 'best': {'em': em},
               'params_checksum': 123.0, 'best_step': 500}
        (d / slug / 'results.json').write_text(json.dumps(res))
  os.makedirs(d, exist_ok=True)
  (d / 'sweep.json').write_text(json.dumps({'points': points}))
  return str(d)


def _fake_eval(calls, em=0.5):
  def fake_eval(workdir, K_list, overrides):
    calls.append((os.path.basename(workdir), K_list, overrides))
    return [{'em': em, 'token_acc': 0.7, 'inner/write_loss': [1.0]}]
  return fake_eval


def test_rows_evaluate_the_whole_story_stage_on_test_once(tmp_path):
  d, out = _sweep(tmp_path), str(tmp_path / 'out')
  calls = []
  rows = bct.task_rows(d, out, _fake_eval(calls))
  assert calls == [('task_id=2,method=gradmem,max_story_sentences=0', [2],
                    'data.eval_split=test,data.n_val=0')]
  g, fc = rows
  assert g['task'] == 'QA2' and g['method'] == 'GradMem K=2' and fc['method'] == 'full context'
  assert g['test_em'] == pytest.approx(50.0)
  assert (g['val_em_stage_2'], g['val_em_stage_4'], g['val_em_stage_all']) == pytest.approx(
      (99.0, 93.0, 60.0))
  assert g['minutes'] == pytest.approx(6.0)
  # not run yet: nothing evaluated, nothing invented
  assert fc['test_em'] is None and fc['minutes'] is None and fc['val_em_stage_2'] is None
  # the test result is cached: a second call evaluates nothing
  rows2 = bct.task_rows(d, out, lambda *a: pytest.fail('evaluated again'))
  assert rows2[0]['test_em'] == pytest.approx(50.0)
  md = bct.table(rows2)
  assert '| QA2 | GradMem K=2 | 50.0 | 99.0 | 93.0 | 60.0 | 6.0 |' in md
  assert '| QA2 | full context | - | - | - | - | - |' in md


def test_a_changed_run_is_evaluated_again(tmp_path):
  d, out = _sweep(tmp_path), str(tmp_path / 'out')
  bct.task_rows(d, out, _fake_eval([]))
  slug = 'task_id=2,method=gradmem,max_story_sentences=0'
  res = json.loads((tmp_path / 'qa2' / slug / 'results.json').read_text())
  res['params_checksum'] = 456.0  # rerun: other parameters under the same name
  (tmp_path / 'qa2' / slug / 'results.json').write_text(json.dumps(res))
  calls = []
  rows = bct.task_rows(d, out, _fake_eval(calls, em=0.7))
  assert len(calls) == 1 and rows[0]['test_em'] == pytest.approx(70.0)


def test_labels_follow_the_points():
  assert bct.label({'method': 'rmt', 'K': 1, 'memory.mem_proj': 'proj'}) == 'RMT x1 + projection'
  assert bct.label({'method': 'rmt', 'K': 2}) == 'RMT x2'
  assert bct.label({'method': 'gradmem', 'K': 1, 'grad_mode': 'first'}) == \
      'GradMem K=1 first-order'


def _edit_points(d, edit):
  with open(os.path.join(d, 'sweep.json')) as f:
    s = json.load(f)
  s['points'] = edit(s['points'])
  with open(os.path.join(d, 'sweep.json'), 'w') as f:
    json.dump(s, f)


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='sweep.json'):
    bct.task_rows(str(tmp_path), str(tmp_path), None)
  cases = [
      (lambda ps: [p for p in ps if p['overrides']['max_story_sentences'] != 4],
       r'max_story_sentences in \[4\]'),
      (lambda ps: ps + [dict(ps[0], slug='again')], 'same method'),
      (lambda ps: ps + [{'slug': 'x', 'overrides': dict(ps[0]['overrides'],
                                                     max_story_sentences=3)}],
       r'max_story_sentences=3; allowed: \(2, 4, 0\)'),
      (lambda ps: ps + [{'slug': 'x', 'overrides': dict(ps[0]['overrides'], task_id=3)}],
       'mixes bAbI tasks'),
      (lambda ps: [{'slug': 'x', 'overrides': {'task_id': 2}}], 'sets no method'),
      (lambda ps: [], 'lists no points'),
  ]
  for i, (edit, match) in enumerate(cases):
    d = _sweep(tmp_path, name=f'case{i}')
    _edit_points(d, edit)
    with pytest.raises(ValueError, match=match):
      bct.task_rows(d, str(tmp_path / 'o'), None)


def test_recency_answer_is_the_last_answer_word_named():
  from gradmem_jax.data.babi import BabiExample
  ex = BabiExample(task=1, story=('Mary moved to the bathroom.', 'John went to the hallway.',
                                  'Mary travelled to the office.'),
                   question='Where is Mary?', answer='office', supporting=(2,), source='x:1')
  assert bct.recency_answer(ex, {'bathroom', 'hallway', 'office'}) == 'office'
  assert bct.recency_answer(ex, {'bathroom', 'hallway'}) == 'hallway'
  assert bct.recency_answer(ex, {'garden'}) is None


def test_heuristic_rows_on_the_shipped_qa1_test_split():
  from gradmem_jax.data.babi_task import SHARED_BABI
  if not os.path.isdir(SHARED_BABI):
    pytest.skip('the shipped bAbI data is not beside this checkout')
  majority, recency = bct.heuristic_rows(SHARED_BABI, 1)
  assert majority['test_em'] == pytest.approx(14.9) and recency['test_em'] == pytest.approx(52.7)
  assert recency['minutes'] is None


def test_plot_draws_the_finished_cells_only(tmp_path, monkeypatch):
  rows = [{'task': 'QA1', 'method': 'GradMem K=1', 'test_em': 98.1},
          {'task': 'QA1', 'method': 'RMT x1', 'test_em': None},
          {'task': 'QA1', 'method': '(majority answer)', 'test_em': 14.9},
          {'task': 'QA2', 'method': 'GradMem K=1', 'test_em': None}]
  import matplotlib.axes
  bars = []
  real_bar = matplotlib.axes.Axes.bar
  monkeypatch.setattr(matplotlib.axes.Axes, 'bar',
                      lambda self, x, h, *a, **k: bars.append(list(h)) or real_bar(self, x, h, *a, **k))
  path = str(tmp_path / 'bars.png')
  assert bct.plot(rows, path) and os.path.getsize(path) > 0
  assert bars == [[98.1], []]  # one bar: the unfinished cells are not drawn (as 0 or otherwise)
  rows[0]['test_em'] = None
  assert not bct.plot(rows, str(tmp_path / 'none.png'))
  assert not os.path.exists(tmp_path / 'none.png')
