"""What KV runs get wrong: answer outcomes and EM by the queried pair's position."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gradmem_jax import kv_errors
from gradmem_jax.data.kv import KVTask, KVTaskConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pairs_from_text(task, sample):
  """The context's (key, value) strings read from its text `!k1:v1!!k2:v2!...|`: a parse of
  its own, independent of kv_errors.context_pairs."""
  text = task.tokenizer.decode(sample.context)
  return [tuple(chunk.split(':')) for chunk in text.rstrip('|').split('!') if chunk]


def test_outcomes_and_positions_of_made_up_answers():
  task = KVTask(KVTaskConfig(n_pairs=4, n_val=40))
  val = task.validation_set()
  rows, want = [], []
  for i, s in enumerate(val):
    pairs = _pairs_from_text(task, s)
    key = task.tokenizer.decode(s.query)[2:-1]  # `?!k:`
    j = [k for k, _ in pairs].index(key)
    other = pairs[(j + 1) % 4][1]
    right = pairs[j][1]
    wrong_first = next(c for c in task.tokenizer.symbols if c != right[0])
    not_a_value = right[0] + next(c for c in task.tokenizer.symbols
                                  if right[0] + c not in [v for _, v in pairs])
    answer, outcome = [(right + '!', 'correct'), (other + '!', "another pair's value"),
                       (not_a_value + '!', 'first symbol right'),
                       (wrong_first + 'Q!', 'other')][i % 4]
    if outcome == 'other' and wrong_first + 'Q' in [v for _, v in pairs]:
      continue  # the made-up answer happens to be a value of the context
    rows.append(kv_errors.classify(s, answer, task))
    want.append((j + 1, outcome))
  assert [(r['position'], r['outcome']) for r in rows] == want
  assert all(r['n_pairs'] == 4 for r in rows)
  s = kv_errors.summarize(rows)
  assert s['n'] == len(rows) and abs(sum(s['outcomes'].values()) - 1) < 1e-9
  assert s['em'] == sum(o == 'correct' for _, o in want) / len(want)
  for b in s['by_position']:
    at = [o for p, o in want if p == b['position']]
    assert b['n'] == len(at) and b['em'] == sum(o == 'correct' for o in at) / len(at)
  md = kv_errors.markdown([('made up', s)])
  assert "| run | answers | correct | another pair's value |" in md and '| pair 4 |' in md
  gaps = kv_errors.summarize([{'position': 1, 'outcome': 'correct'},
                               {'position': 4, 'outcome': 'other'}])  # none at pairs 2-3
  assert '| gaps | 100.0% (1) | - | - | 0.0% (1) |' in kv_errors.markdown([('gaps', gaps)])
  with pytest.raises(ValueError, match='no answers'):
    kv_errors.summarize([])
  keys = [k for k, _ in _pairs_from_text(task, val[0])]
  absent = next(a + b for a in task.tokenizer.symbols for b in task.tokenizer.symbols
                if a + b not in keys)
  bad = type(val[0])(val[0].context, task.tokenizer.encode(f'?!{absent}:'), val[0].target)
  with pytest.raises(ValueError, match='occurs 0 times in the context'):
    kv_errors.classify(bad, 'ab!', task)


def test_kv_errors_command_reads_a_full_context_run(tmp_path):
  # Full context generates its answers from the whole context (FullContext.generate).
  wd = tmp_path / 'run'
  run = lambda *a: subprocess.run([sys.executable, '-m', *a], cwd=ROOT, capture_output=True,
                                  text=True, timeout=600)
  out = run('experiments.train', '--config=configs/kv_retrieval.py:tiny,method=full_context',
            f'--workdir={wd}')
  assert out.returncode == 0, out.stderr[-3000:]
  out = run('experiments.kv_errors', f'--workdir={wd}', '--name=tiny', f'--out={tmp_path / "e"}')
  assert out.returncode == 0, out.stderr[-3000:]
  got, = json.load(open(tmp_path / 'e' / 'kv_errors.json'))
  assert got['name'] == 'tiny' and got['n'] == 16  # the tiny preset's validation set
  assert sum(b['n'] for b in got['by_position']) == 16
  assert got['em'] == pytest.approx(got['gen_em'])  # the evaluator's own score of the answers
  assert '| tiny | 16 |' in (tmp_path / 'e' / 'kv_errors.md').read_text()
  assert (tmp_path / 'e' / 'kv_errors.png').stat().st_size > 0
  out = run('experiments.kv_errors', f'--workdir={wd}', '--name=a', '--name=b',
            f'--out={tmp_path / "e"}')
  assert out.returncode != 0 and '--name is given 2 times for 1 --workdir flags' in out.stderr
