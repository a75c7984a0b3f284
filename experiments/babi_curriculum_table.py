r"""The bAbI table of the curriculum sweeps (issue 13, item 1): test EM per task and method.

  python -m experiments.babi_curriculum_table \
      --sweep_dirs=runs/babi_curriculum,runs/babi_curriculum_qa2,runs/babi_curriculum_qa3 \
      --out=benchmarks/results/babi_cpu/curriculum

Each sweep directory holds one task's `configs/sweeps/babi_curriculum.py` run. For each method, the
whole-story stage (max_story_sentences=0) is the trained model. It is evaluated once on the
task's test split (all 1,000 questions, at the method's own K) and the result is kept in
<out>/test_qa<T>_<run>.json with the run's parameter checksum; a later call reads that file
instead of evaluating again, unless the run has changed.

The table gives, per task and method:
- the test EM;
- the validation EM reached at each stage;
- the minutes of the finished stages together.

A stage that has not run yet shows '-', and its task's test EM is left out. Two answers that
need no model stand beside each task, on the same test questions: the training split's most
frequent answer, and the last answer word named in the story (the recency heuristic that models
trained on whole stories from scratch stall at).
"""
from __future__ import annotations

import os

from absl import app, flags

from gradmem_jax import report
from gradmem_jax.babi_curriculum import (COLUMNS, heuristic_rows, plot, sweep_points, table,
                                         task_rows)
from gradmem_jax.data.babi_task import SHARED_BABI

_SWEEP_DIRS = flags.DEFINE_list('sweep_dirs', None, 'Curriculum sweep directories (one per task).',
                                required=True)
_BABI_DIR = flags.DEFINE_string('babi_dir', SHARED_BABI, 'The bAbI release, for the two '
                                 'answers without a model.')
_OUT = flags.DEFINE_string('out', None, 'Directory for the table and the test evaluations.',
                           required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from gradmem_jax.training import evaluate  # noqa: PLC0415 - jax only when evaluating
  rows = []
  for d in _SWEEP_DIRS.value:
    rows += task_rows(d, _OUT.value, evaluate.evaluate_run)
    rows += heuristic_rows(_BABI_DIR.value, sweep_points(d)[0]['overrides']['task_id'])
  os.makedirs(_OUT.value, exist_ok=True)
  md = table(rows)
  print(md)
  base = os.path.join(_OUT.value, 'babi_curriculum_table')
  with open(base + '.md', 'w') as f:
    f.write(md + '\n')
  report.write_csv(rows, COLUMNS, base + '.csv')
  png = plot(rows, base + '.png')
  print(f'wrote {base}.{{md,csv{",png" if png else ""}}}')


if __name__ == '__main__':
  app.run(main)
