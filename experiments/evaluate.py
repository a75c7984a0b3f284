r"""Evaluate a trained run with any number of WRITE steps (test-time K extrapolation) and any
evaluators.

  python -m experiments.evaluate --workdir=/tmp/kv_run --K_eval=0,1,2,4,8,16 \
      [--overrides=data.n_val=2000] [--checkpoint=/tmp/kv_run/best] [--step=N|best|latest] \
      [--evaluators=teacher_forced,generate]

Prints a table of EM, token accuracy and WRITE loss (at M_K) by K_eval (plus the generation
scores with `generate`) and writes k_extrapolation.{json,csv,md,png} (and predictions_K*.jsonl)
into --out (default: the workdir).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from gradmem_jax import cli_utils, report
from gradmem_jax.training import evaluate

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.', required=True)
_K_EVAL = flags.DEFINE_list('K_eval', ['0', '1', '2', '4', '8'], 'WRITE steps to evaluate with.')
_OVERRIDES = flags.DEFINE_string('overrides', '', 'Config overrides key=value,... (dotted keys or '
                                 "the run's aliases, e.g. data.n_val=200).")
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'Checkpoint directory (default: the best, else the latest).')
_STEP = flags.DEFINE_string('step', None, "Which checkpoint of the workdir (or of --checkpoint): a "
                            "step number (a kept checkpoint of checkpoints/ or best/), 'best' or "
                            "'latest' (default: the best, else the latest).")
_EVALUATORS = flags.DEFINE_list('evaluators', None, 'Evaluators (default: the run\'s '
                                'eval.evaluators): teacher_forced, generate.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: the workdir).')

COLUMNS = ('K_eval', 'em', 'token_acc', 'target_loss', 'write_loss')


def main(argv):
  cli_utils.quiet_logs_unless_asked()  # as the training runs: orbax's INFO logs hidden
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out = _OUT.value or _WORKDIR.value
  rows = evaluate.evaluate_run(_WORKDIR.value, [int(k) for k in _K_EVAL.value], _OVERRIDES.value,
                               _CHECKPOINT.value, evaluators=_EVALUATORS.value,
                               predictions_dir=out, step=_STEP.value)
  columns = list(COLUMNS) + [k for k in rows[0] if k.startswith('gen_')]
  os.makedirs(out, exist_ok=True)
  table = report.markdown_table(rows, columns)
  title = f'{report.describe(rows[0])}, trained with K={rows[0]["K_train"]}'
  print(f'{title} (checkpoint step {rows[0]["checkpoint_step"]})')
  print(table)
  base = os.path.join(out, 'k_extrapolation')
  with open(base + '.json', 'w') as f:
    json.dump(rows, f, indent=2)
  with open(base + '.md', 'w') as f:
    f.write(table + '\n')
  report.write_csv(rows, columns, base + '.csv')
  report.plot_k_extrapolation([(report.describe(rows[0]), rows)], base + '.png', title=title,
                              k_train=rows[0]['K_train'])
  print(f'wrote {base}.{{json,csv,md,png}}')


if __name__ == '__main__':
  app.run(main)
