"""experiments.babi_curriculum_table: the bAbI curriculum sweeps' table (stages, test evaluation)."""
import json
import os

import pytest

from experiments import babi_curriculum_table as bct


def _sweep(tmp_path, task=2, finished=('gradmem',)):
  """A curriculum sweep directory as experiments.sweep writes it: every point in sweep.json,
  results.json for the finished methods' stages."""
  d = tmp_path / f'qa{task}'
  points = []
  for method in ('gradmem', 'full_context'):
    for cut, minutes, em in ((2, 1.0, 0.99), (4, 2.0, 0.93), (0, 3.0, 0.6)):
      o = {'task_id': task, 'method': method, 'max_story_sentences': cut}
      slug = f'task_id={task},method={method},max_story_sentences={cut}'
      points.append({'slug': slug, 'overrides': o})
      if method in finished:
        os.makedirs(d / slug)
        res = {'K': 1, 'wall_time_s': 60 * minutes, 'best': {'em': em}}
        (d / slug / 'results.json').write_text(json.dumps(res))
  os.makedirs(d, exist_ok=True)
  (d / 'sweep.json').write_text(json.dumps({'points': points}))
  return str(d)


def test_rows_evaluate_the_whole_story_stage_on_test_once(tmp_path):
  d, out = _sweep(tmp_path), str(tmp_path / 'out')
  calls = []

  def fake_eval(workdir, K_list, overrides):
    calls.append((os.path.basename(workdir), K_list, overrides))
    return [{'em': 0.5, 'token_acc': 0.7, 'inner/write_loss': [1.0]}]

  rows = bct.task_rows(d, out, fake_eval)
  assert calls == [('task_id=2,method=gradmem,max_story_sentences=0', [1], 'data.eval_split=test')]
  g, fc = rows
  assert g['task'] == 'QA2' and g['method'] == 'GradMem K=1'
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
  assert '| QA2 | GradMem K=1 | 50.0 | 99.0 | 93.0 | 60.0 | 6.0 |' in md
  assert '| QA2 | full context | - | - | - | - | - |' in md


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='sweep.json'):
    bct.task_rows(str(tmp_path), str(tmp_path), None)
  d = _sweep(tmp_path)
  with open(os.path.join(d, 'sweep.json')) as f:
    s = json.load(f)
  s['points'] = [p for p in s['points'] if p['overrides']['max_story_sentences'] != 4]
  with open(os.path.join(d, 'sweep.json'), 'w') as f:
    json.dump(s, f)
  with pytest.raises(ValueError, match=r'max_story_sentences in \[4\]'):
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


def test_plot_draws_the_finished_cells_only(tmp_path):
  rows = [{'task': 'QA1', 'method': 'GradMem K=1', 'test_em': 98.1},
          {'task': 'QA1', 'method': '(majority answer)', 'test_em': 14.9},
          {'task': 'QA2', 'method': 'GradMem K=1', 'test_em': None}]
  path = str(tmp_path / 'bars.png')
  assert bct.plot(rows, path) and os.path.getsize(path) > 0
  rows[0]['test_em'] = None
  assert not bct.plot(rows, str(tmp_path / 'none.png'))
  assert not os.path.exists(tmp_path / 'none.png')
