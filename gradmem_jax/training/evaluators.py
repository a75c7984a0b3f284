"""Evaluators by name (`eval.evaluators`): each scores parameters on the task's validation set
with K WRITE steps and returns a flat dict of metrics.

- `teacher_forced`: EM and token accuracy of the teacher-forced READ, target loss, inner-loop
  statistics (every task, every method); the training loop selects the best checkpoint by it.
- `generate`: greedy answers decoded from memory, scored as text by the task
  (`task.score_prediction`, e.g. the official SQuAD EM/F1); needs a method that can generate.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradmem_jax.memory import losses
from gradmem_jax.registry import Registry
from gradmem_jax.training import mesh as mesh_lib
from gradmem_jax.training.experiment import Experiment
from gradmem_jax.training.steps import make_eval_step

EVALUATORS: Registry[type] = Registry('evaluator', 'eval.evaluators')


def summarize_sums(sums: dict) -> dict:
  """Rates from summed metrics: em, token_acc, target_loss, inner-loop means per sample."""
  out = losses.summarize(sums)
  n = float(sums.get('n_weight', 0)) or 1.0
  for k, v in sums.items():
    if k.startswith('inner/'):
      arr = np.asarray(v, np.float64) / n
      out[k] = arr.tolist() if arr.ndim else float(arr)
  return out


@EVALUATORS.register('teacher_forced')
class TeacherForced:
  """Jitted teacher-forced evaluation over the fixed validation set, for any K."""

  def __init__(self, exp: Experiment):
    self.exp = exp
    self._steps: dict = {}
    self._batches = None

  def batches(self):
    if self._batches is None:
      cfg = self.exp.config
      local = self.exp.task.eval_batches(cfg.eval.batch_size, jax.process_index(),
                                         jax.process_count())
      self._batches = [mesh_lib.global_batch(b, self.exp.mesh) for b in local]
    return self._batches

  def __call__(self, params, K: Optional[int] = None) -> dict:
    if K not in self._steps:
      self._steps[K] = jax.jit(make_eval_step(self.exp, K))
    total = None
    for b in self.batches():
      s = self._steps[K](params, b)
      total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    return summarize_sums(mesh_lib.to_host(total))


@EVALUATORS.register('generate')
class Generation:
  """Greedy answers generated from memory for the validation set, scored as text by the task.

  Returns the mean of every score (e.g. gen_em, gen_f1) and keeps one row per sample with the
  prediction in `self.predictions[K]`."""

  def __init__(self, exp: Experiment, max_samples: int = 0):
    if not exp.method.capabilities.generate:
      raise ValueError(f'eval.evaluators=generate needs a method that generates from its memory; '
                       f'memory.method={exp.mem_cfg.method!r} cannot')
    self.exp = exp
    self.max_samples = max_samples
    self.predictions: dict = {}
    self._fns: dict = {}

  def __call__(self, params, K: Optional[int] = None) -> dict:
    exp = self.exp
    task, method = exp.task, exp.method.for_evaluation(K)
    batch_size = int(exp.config.eval.batch_size)
    if K not in self._fns:  # jitted once per K: later evaluations reuse the compiled programs
      self._fns[K] = (
          jax.jit(lambda p, c, m: method.write(p, c, m, K=K)[0]),
          jax.jit(lambda p, st, q, ql: method.generate(
              p, st, q, ql, max_new_tokens=task.max_new_tokens, stop_ids=task.stop_ids,
              pad_id=task.pad_id)))
    write, gen = self._fns[K]
    val = list(task.validation_set())
    if self.max_samples:
      val = val[:self.max_samples]
    plen = max(len(s.query) for s in val)
    rows = []
    for start in range(0, len(val), batch_size):
      chunk = val[start:start + batch_size]
      batch = task.collate(chunk, batch_size=batch_size)
      state = write(params, jnp.asarray(batch['context']), jnp.asarray(batch['context_mask']))
      prompt = np.full((batch_size, plen), task.pad_id, np.int32)
      lens = np.ones((batch_size,), np.int32)
      for i, s in enumerate(chunk):
        prompt[i, :len(s.query)] = s.query
        lens[i] = len(s.query)
      out = np.asarray(gen(params, state, jnp.asarray(prompt), jnp.asarray(lens)))
      for i, s in enumerate(chunk):
        ids = out[i].tolist()
        stop = next((j for j, t in enumerate(ids) if t in task.stop_ids), len(ids))
        pred = task.tokenizer.decode(ids[:stop]).strip()
        row = {'index': start + i, 'prediction': pred}
        if hasattr(s, 'qid'):
          row['id'] = s.qid
        row.update(task.score_prediction(s, pred))
        rows.append(row)
    self.predictions[K] = rows
    keys = [k for k in rows[0] if k not in ('index', 'id', 'prediction')]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def build_evaluators(exp: Experiment, names=None) -> dict:
  """{name: evaluator} for `names` (default: config.eval.evaluators); teacher_forced first."""
  names = list(names if names is not None else exp.config.eval.evaluators)
  if 'teacher_forced' not in names:
    names.insert(0, 'teacher_forced')
  return {n: EVALUATORS.get(n)(exp) for n in names}


def evaluate_all(evaluators: dict, params, K: Optional[int] = None) -> dict:
  out = {}
  for ev in evaluators.values():
    out.update(ev(params, K))
  return out


def xla_cost(compiled) -> dict:
  """A compiled program's cost analysis as one dict ('flops', 'bytes accessed', ...): older jax
  versions return a list with one entry per computation."""
  ca = compiled.cost_analysis()
  return ca[0] if isinstance(ca, (list, tuple)) else ca


def flops_per_sample(exp: Experiment, params) -> dict:
  """XLA's FLOP counts of WRITE and of READ for one validation sample (inference, no graph)."""
  sample = exp.task.collate([exp.task.validation_set()[0]])
  batch = {k: jnp.asarray(v) for k, v in sample.items()}
  method = exp.method

  def write(p, b):
    return method.write(p, b['context'], b['context_mask'])[0]

  def read(p, state, b):
    return method.read_logits(p, state, b['qa'])

  def count(f, *args):
    try:
      # no 'flops' entry: nothing computed
      return float(xla_cost(jax.jit(f).lower(*args).compile()).get('flops', 0.0))
    except Exception:  # noqa: BLE001 - informational only
      return float('nan')

  state = jax.eval_shape(write, params, batch)
  state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), state)
  write_flops = count(write, params, batch) if method.capabilities.memory else None
  return {'write_flops_per_sample': write_flops,
          'read_flops_per_sample': count(read, params, state, batch)}
