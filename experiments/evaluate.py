r"""Evaluate a trained run with any number of WRITE steps (test-time K extrapolation).

  python -m experiments.evaluate --workdir=/tmp/kv_run --K_eval=0,1,2,4,8,16 \
      [--overrides=data.n_val=2000] [--checkpoint=/tmp/kv_run/checkpoints] [--generate]

Prints a table of EM, token accuracy and WRITE loss (at M_K) by K_eval and writes
k_extrapolation.{json,csv,md,png} into --out (default: the workdir).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from configs.kv_retrieval import ALIASES
from gradmem_jax.training import evaluate

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.', required=True)
_K_EVAL = flags.DEFINE_list('K_eval', ['0', '1', '2', '4', '8'], 'WRITE steps to evaluate with.')
_OVERRIDES = flags.DEFINE_string('overrides', '', 'Config overrides key=value,... (e.g. n_pairs=8).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'Checkpoint directory (default: the best, else the latest).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: the workdir).')
_GENERATE = flags.DEFINE_bool('generate', False,
                              'Also generate answers greedily from memory and score them as text '
                              '(official SQuAD normalised EM/F1); predictions_K*.jsonl are written.')

COLUMNS = ('K_eval', 'em', 'token_acc', 'target_loss', 'write_loss')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  ks = [int(k) for k in _K_EVAL.value]
  out = _OUT.value or _WORKDIR.value
  rows = evaluate.evaluate_run(_WORKDIR.value, ks, _OVERRIDES.value, ALIASES, _CHECKPOINT.value,
                               generate=_GENERATE.value, predictions_dir=out)
  columns = COLUMNS + (('gen_em', 'gen_f1') if _GENERATE.value else ())
  os.makedirs(out, exist_ok=True)
  table = evaluate.markdown_table(rows, columns)
  what = f'{rows[0]["n_pairs"]} pairs' if rows[0]['n_pairs'] is not None else rows[0]['task']
  print(f'{rows[0]["method"]}, {what}, trained with K={rows[0]["K_train"]} '
        f'(checkpoint step {rows[0]["checkpoint_step"]})')
  print(table)
  base = os.path.join(out, 'k_extrapolation')
  with open(base + '.json', 'w') as f:
    json.dump(rows, f, indent=2)
  with open(base + '.md', 'w') as f:
    f.write(table + '\n')
  evaluate.write_csv(rows, columns, base + '.csv')
  evaluate.plot_k_extrapolation(
      rows, base + '.png',
      title=f'{rows[0]["method"]}, {what}, K_train={rows[0]["K_train"]}')
  print(f'wrote {base}.{{json,csv,md,png}}')


if __name__ == '__main__':
  app.run(main)
