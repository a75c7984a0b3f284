"""The bAbI curriculum table (issue 13, item 1): test EM per task and method from the
curriculum sweeps (configs/sweeps/babi_curriculum.py). The entry point is
`experiments/babi_curriculum_table.py`, whose docstring says what the table holds."""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

from gradmem_jax import claims, report, sweeps
from gradmem_jax.data import babi

STAGE_ORDER = (2, 4, 0)  # max_story_sentences of the three stages; 0 = whole stories
# All of the test split's questions (data.n_val=0), whatever the run's validation subset was.
TEST_OVERRIDES = 'data.eval_split=test,data.n_val=0'
COLUMNS = ('task', 'method', 'test_em', 'val_em_stage_2', 'val_em_stage_4', 'val_em_stage_all',
           'minutes')


def label(overrides: dict) -> str:
  """'GradMem K=1', 'RMT x1 + projection', 'full context', from a sweep point's overrides (the
  claims report's names, plus RMT's projection)."""
  method = overrides['method']
  name = claims.label({'method': method, 'K': overrides.get('K', 1),
                       'grad_mode': overrides.get('grad_mode', 'second'),
                       'rmt_update': overrides.get('memory.rmt_update')})
  if name is None or method == 'full_context':  # its committed tables say 'full context'
    return method.replace('_', ' ')
  proj = overrides.get('memory.mem_proj', overrides.get('mem_proj'))
  return name + (' + projection' if method == 'rmt' and proj == 'proj' else '')


def sweep_points(sweep_dir: str) -> list[dict]:
  """The points (slug, overrides) of a sweep directory's sweep.json."""
  path = os.path.join(sweep_dir, 'sweep.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{sweep_dir!r} has no sweep.json: give the directories that '
                            'experiments.sweep wrote for configs/sweeps/babi_curriculum.py')
  with open(path) as f:
    return json.load(f)['points']


def task_rows(sweep_dir: str, out: str, evaluate_run: Callable) -> list[dict]:
  """One row per method of one task's curriculum sweep; evaluates the finished whole-story stages
  on the test split (cached in `out`, keyed by the run and its parameters' checksum)."""
  by_label: dict[str, dict[int, tuple[str, Optional[dict]]]] = {}
  finished = {r['slug']: r for r in sweeps.collect(sweep_dir)}
  task = None
  for p in sweep_points(sweep_dir):
    o = p['overrides']
    for field in ('task_id', 'method'):
      if field not in o:
        raise ValueError(f'{sweep_dir!r}: point {p["slug"]!r} sets no {field}; expected the points '
                         'of configs/sweeps/babi_curriculum.py')
    if task is not None and o['task_id'] != task:
      raise ValueError(f'{sweep_dir!r} mixes bAbI tasks (task_id {task} and {o["task_id"]}); give '
                       'one sweep directory per task')
    task = o['task_id']
    stage = int(o.get('max_story_sentences', 0))
    if stage not in STAGE_ORDER:
      raise ValueError(f'{sweep_dir!r}: point {p["slug"]!r} has max_story_sentences={stage}; '
                       f'allowed: {STAGE_ORDER} (the stages of babi_curriculum.py)')
    stages = by_label.setdefault(label(o), {})
    if stage in stages:
      raise ValueError(f'{sweep_dir!r}: points {stages[stage][0]!r} and {p["slug"]!r} are the same '
                       f'method ({label(o)}) and stage (max_story_sentences={stage})')
    stages[stage] = (p['slug'], finished.get(p['slug']))
  if task is None:
    raise ValueError(f'{sweep_dir!r}: sweep.json lists no points')
  rows = []
  for name, stages in by_label.items():
    missing = sorted(set(STAGE_ORDER) - set(stages))
    if missing:
      raise ValueError(f'{sweep_dir!r}: {name} has no stage with max_story_sentences in '
                       f'{missing}; expected the stages {STAGE_ORDER} of babi_curriculum.py')
    row = {'task': f'QA{task}', 'method': name}
    done = [stages[s][1] for s in STAGE_ORDER if stages[s][1] is not None]
    for s in STAGE_ORDER:
      res = stages[s][1]
      row[f'val_em_stage_{s or "all"}'] = None if res is None else 100 * res['best']['em']
    row['minutes'] = sum(r['wall_time_s'] for r in done) / 60 if done else None
    row['test_em'] = None
    slug, final = stages[0]
    if final is not None:
      source = {'sweep_dir': os.path.abspath(sweep_dir), 'slug': slug,
                'params_checksum': final.get('params_checksum'), 'best_step': final.get('best_step')}
      cache = os.path.join(out, f'test_qa{task}_{slug}.json')
      test = None
      if os.path.exists(cache):
        with open(cache) as f:
          test = json.load(f)
        if test.get('source') != source:
          test = None  # another run (or a rerun) under the same name: evaluate again
      if test is None:
        test = evaluate_run(os.path.join(sweep_dir, slug), [final.get('K', 1)],
                            TEST_OVERRIDES)[0]
        test = {k: v for k, v in test.items() if not isinstance(v, (list, dict))}
        test['source'] = source
        os.makedirs(out, exist_ok=True)
        with open(cache, 'w') as f:
          json.dump(test, f, indent=2)
      row['test_em'] = 100 * test['em']
    rows.append(row)
  return rows


def recency_answer(example: 'babi.BabiExample', answers: set) -> Optional[str]:
  """The last word of the story that is one of `answers` (None if the story names none)."""
  for sentence in reversed(example.story):
    for word in reversed(sentence.replace('.', ' ').replace(',', ' ').split()):
      if word in answers:
        return word
  return None


def heuristic_rows(babi_dir: str, task: int) -> list[dict]:
  """Test EM of the majority answer (of the training split) and of the recency heuristic."""
  train = babi.load_babi(babi_dir, task, 'train').examples
  test = babi.load_babi(babi_dir, task, 'test').examples
  counts: dict[str, int] = {}
  for e in train:
    counts[e.answer] = counts.get(e.answer, 0) + 1
  majority = max(sorted(counts), key=counts.get)
  answers = set(counts)
  em = lambda guess: 100 * sum(guess(e) == e.answer for e in test) / len(test)
  row = lambda name, v: {'task': f'QA{task}', 'method': name, 'test_em': v,
                         **{c: None for c in COLUMNS[3:]}}
  return [row('(majority answer)', em(lambda e: majority)),
          row('(last answer word in the story)', em(lambda e: recency_answer(e, answers)))]


def table(rows: list[dict]) -> str:
  def cell(v):
    if v is None:
      return '-'
    return f'{v:.1f}' if isinstance(v, float) else str(v)
  head = ('| task | method | test EM (%) | val EM: last 2 statements | last 4 | whole stories | '
          'minutes (finished stages) |')
  lines = [head, '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(cell(r[c]) for c in COLUMNS) + ' |' for r in rows]
  return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> bool:
  """Test EM per task: one bar per method, the two answers without a model as marks."""
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  methods = [m for m in dict.fromkeys(r['method'] for r in rows) if not m.startswith('(')]
  cell = {(r['task'], r['method']): r['test_em'] for r in rows}
  if not any(cell.get((t, m)) is not None for t in tasks for m in methods):
    return False
  plt = report._pyplot()  # noqa: SLF001 - the project's Agg backend setup
  fig, ax = plt.subplots(figsize=(3.6 + 1.4 * len(tasks), 3.8))
  width = 0.8 / max(len(methods), 1)
  for i, m in enumerate(methods):
    xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(tasks))]
    ems = [cell.get((t, m)) for t in tasks]
    ax.bar([x for x, e in zip(xs, ems) if e is not None], [e for e in ems if e is not None],
           width, label=m, color=f'C{i}')
  for name, style in (('(majority answer)', 'k:'), ('(last answer word in the story)', 'k--')):
    for j, t in enumerate(tasks):
      if cell.get((t, name)) is not None:
        ax.plot([j - 0.45, j + 0.45], [cell[(t, name)]] * 2, style, lw=1.2,
                label=name.strip('()') if j == 0 else None)
  ax.set_xticks(range(len(tasks)), tasks)
  ax.set(ylabel='test exact match (%)', ylim=(0, 105),
         title='bAbI from scratch on CPU, curriculum in story length')
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
