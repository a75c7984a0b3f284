r"""What KV-retrieval runs get wrong: EM by the queried pair's position, and what the wrong
answers are (another pair's value, the right first symbol, other; `gradmem_jax.kv_errors`).

  python -m experiments.kv_errors \
      --workdir=runs/claims_baselines/n_pairs=4,method=full_context,seed=0 --name=transformer \
      --workdir=runs/claims_cpu/n_pairs=4,method=gradmem,... --name=gradmem \
      [--K_eval=K] [--overrides=data.n_val=2000] --out=DIR

Each run answers its validation set by greedy generation from its best parameters (its trained
K, or --K_eval for a method with test-time K). Writes kv_errors.md, kv_errors.json and
kv_errors.png (EM by place, the answers' outcomes) to --out.
"""
from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags

from gradmem_jax import cli_utils, kv_errors
from gradmem_jax.training import evaluate

_WORKDIRS = flags.DEFINE_multi_string('workdir', None, 'A KV training workdir (or an archived '
                                      'point with best/); repeat the flag for several (sweep '
                                      'point names hold commas).', required=True)
_NAMES = flags.DEFINE_multi_string('name', None, 'A name per --workdir for the tables, in the '
                                   "same order (default: the workdir's base name).")
_K_EVAL = flags.DEFINE_integer('K_eval', None, 'WRITE steps (default: each run\'s trained K).')
_OVERRIDES = flags.DEFINE_string('overrides', '', 'Config overrides applied to every run, e.g. '
                                 'data.n_val=2000.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)


def analyse(workdir: str, K=None, overrides: str = '') -> dict:
  """summarize() of one run's generated answers, with the run's identity and K."""
  config = evaluate.load_run_config(workdir, overrides)
  if config.data.get('task') != 'kv':
    raise ValueError(f'{workdir}: data.task={config.data.get("task")!r}; kv_errors reads KV '
                     'retrieval runs only (data.task=kv)')
  from gradmem_jax.training import build_experiment
  task = build_experiment(config).task
  K = config.memory.K if K is None else K
  with tempfile.TemporaryDirectory() as tmp:
    row, = evaluate.evaluate_run(workdir, [K], overrides, evaluators=['generate'],
                                 predictions_dir=tmp, step='best')
    path = os.path.join(tmp, f'predictions_K{row["K_eval"]}.jsonl')
    with open(path) as f:
      predictions = [json.loads(line) for line in f]
  val = task.validation_set()
  if len(predictions) != len(val):
    raise RuntimeError(f'{workdir}: {len(predictions)} answers for {len(val)} validation samples')
  rows = [kv_errors.classify(val[p['index']], p['prediction'], task) for p in predictions]
  return {**kv_errors.summarize(rows), 'workdir': workdir, 'overrides': overrides,
          'K_eval': row['K_eval'], 'gen_em': row['gen_em'],
          'checkpoint_step': row['checkpoint_step'],
          'identity': {k: row[k] for k in row['identity_fields']}}


def main(argv):
  cli_utils.quiet_logs_unless_asked()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  names = _NAMES.value or [os.path.basename(os.path.normpath(w)) for w in _WORKDIRS.value]
  if len(names) != len(_WORKDIRS.value):
    raise app.UsageError(f'--name is given {len(names)} times for {len(_WORKDIRS.value)} '
                         '--workdir flags')
  results = []
  for name, wd in zip(names, _WORKDIRS.value):
    try:
      results.append((name, analyse(wd, _K_EVAL.value, _OVERRIDES.value)))
    except (ValueError, FileNotFoundError) as e:
      raise app.UsageError(str(e))
    print(f'{name}: EM {100 * results[-1][1]["em"]:.1f}% over {results[-1][1]["n"]} answers '
          f'(K_eval={results[-1][1]["K_eval"]}, step {results[-1][1]["checkpoint_step"]})',
          flush=True)
  md = kv_errors.markdown(results)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, 'kv_errors.md'), 'w') as f:
    f.write('# What the KV runs get wrong\n\nOutcomes of the generated answers, then EM by the '
            "queried pair's place in the context (answers there in brackets).\n\n" + md +
            '\n\n![kv errors](kv_errors.png)\n')
  with open(os.path.join(_OUT.value, 'kv_errors.json'), 'w') as f:
    json.dump([{'name': n, **r} for n, r in results], f, indent=2)
  kv_errors.plot(results, os.path.join(_OUT.value, 'kv_errors.png'))
  print(md)
  print(f'wrote {_OUT.value}/kv_errors.{{md,json,png}}')


if __name__ == '__main__':
  app.run(main)
