"""`train_and_evaluate(config, workdir)`: the resumable outer loop shared by every task and method.

Read top to bottom: set up the run, restore or initialise the train state (resume, init_from,
pretrained, fresh: in that order), train with periodic evaluation and checkpoints, then evaluate
the final parameters and write results.json. The step rng is derived from (seed, step) and the
data position is one integer, so a resumed run continues bit for bit.

Non-finite values: every step returns a small vector of finiteness flags (steps.py), read on the
host every step. `train.on_nonfinite` decides: 'stop' (default; the update is not applied, the last
good state is checkpointed, the batch's sample indices go to <workdir>/nonfinite_step_<n>.json and
NonFiniteError names the step, the quantity that went non-finite first and the checkpoint to
replay from), 'skip' (the update is dropped and counted; NonFiniteError after `train.max_skips`
in a row) or 'ignore'. A non-finite state is never checkpointed. `train.debug_nans` turns on
jax_debug_nans (for replaying a step).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import threading
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from gradmem_jax import config_lib, environment, workdir_lock
from gradmem_jax.data import BATCH_SPEC
from gradmem_jax.models import pretrained as pretrained_lib
from gradmem_jax.training import mesh as mesh_lib
from gradmem_jax.training.checkpoint import CheckpointError, Checkpointer, load_params
from gradmem_jax.training.evaluators import (build_evaluators, evaluate_all, flops_per_sample,
                                             summarize_sums)
from gradmem_jax.training.experiment import (Experiment, abstract_state, build_experiment,
                                             init_state, pretrained_params, state_from_params)
from gradmem_jax.training.logging_utils import MetricsWriter, Progress, format_duration
from gradmem_jax.training.steps import make_train_step


# ------------------------------------------------------------------------------------------------
# Data feeding with a background thread (deterministic: every batch is a function of its index).


class Prefetcher:

  def __init__(self, it: Iterator, size: int = 2):
    self._q: queue.Queue = queue.Queue(maxsize=size)
    self._it = it
    self._stop = threading.Event()
    self._t = threading.Thread(target=self._run, daemon=True)
    self._t.start()

  def _run(self):
    try:
      for item in self._it:
        while not self._stop.is_set():
          try:
            self._q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except Exception as e:  # noqa: BLE001 - surfaced in the consumer
      self._q.put(e)

  def __next__(self):
    item = self._q.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self._stop.set()


# ------------------------------------------------------------------------------------------------
# Setting up, restoring or initialising.


ON_NONFINITE = ('stop', 'skip', 'ignore')


class NonFiniteError(FloatingPointError):
  """Training stopped on non-finite values (train.on_nonfinite='stop', or too many skips)."""


def _describe_flag(name: str, K: int) -> str:
  if name.startswith('write_loss['):
    return f'the WRITE loss at inner step k={name[11:-1]} (of K={K})'
  if name.startswith('inner_grad_norm['):
    return f'the inner (WRITE) gradient norm at inner step k={name[16:-1]} (of K={K})'
  return {'mem_norm': 'the written memory norm |M_K|', 'loss': 'the outer loss',
          'grad_norm': 'the global gradient norm',
          'state': 'the updated parameters / optimizer state'}.get(name, name)


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != new:
      logging.warning('config differs from the one this workdir was started with; '
                      'continuing with the new one (old kept as config.prev.json)')
      os.replace(path, os.path.join(workdir, 'config.prev.json'))
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _host(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x), mesh_lib.to_host(tree))


def _fresh_meta() -> dict:
  return {'data_index': 0, 'best_token_acc': -1.0, 'best_step': -1, 'last_em': None,
          'elapsed_s': 0.0}


def _all_ok(ok: bool) -> bool:
  """Whether `ok` holds on every process (one process: itself)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _attempt(fn):
  """(fn(), None), or (None, the CheckpointError it raised), agreed by every process: a restore
  that fails on one process fails on all."""
  try:
    out, err = fn(), None
  except CheckpointError as e:
    out, err = None, e
  if not _all_ok(err is None):
    return None, err or CheckpointError('it failed on another process')
  return out, None


_MEND_PLANS = ('none', 'resumed', 'checkpoint', 'best', 'reset')


def _mend_best(ckpt: Checkpointer, state: dict, meta: dict, abstract, say=print) -> dict:
  """The resumed best record (`meta`: best_step, best_token_acc, best) and best/ must name the
  same step: results.json's `best` is the evaluation whose parameters are in best/. They part
  when the run stopped, or a sweep archive snapshotted it, after a step's resumable checkpoint
  and before its best save (two separate asynchronous saves), or when a best from the lost part
  of the run (newer than the resumed step, moved to best.lost/ by `set_aside_best_after`) had
  replaced the record's step. Then the record's parameters are saved into best/ again, from the
  resumed checkpoint (when the record names the resumed step) or from the kept checkpoint of
  that step. Where they are nowhere (that checkpoint not kept, or damaged), the record starts
  again from what best/ still holds (or from the next evaluation), with a warning; a finished
  run started again writes no new checkpoint, so that warning comes back at each start. Process
  0 chooses from the files and every process follows (the saves and restores are collective);
  a restore that fails on any process falls through to the next choice on all. Returns the meta
  to go on with."""
  best_step = int(meta.get('best_step', -1))
  have = ckpt.best_steps()
  resumed, newest = int(state['step']), max(have, default=-1)
  where = None
  if best_step < 0 or best_step in have:
    plan = 'none'
  elif newest > best_step:  # best/ names a later best than the record: best/ is what is kept
    plan, where = 'best', f'it holds step {newest}, later than the record\'s'
  elif best_step == resumed:
    plan = 'resumed'
  else:
    damage = ckpt.step_damage('checkpoints', best_step)
    on_disk = os.path.isdir(os.path.join(ckpt.workdir, 'checkpoints', str(best_step)))
    plan = 'checkpoint' if damage is None else 'best' if have else 'reset'
    where = (f'checkpoints/{best_step} is damaged: {damage}' if on_disk else
             'no checkpoint of that step is kept')
  if jax.process_count() > 1:  # process 0's listing decides for all
    from jax.experimental import multihost_utils
    i, newest = (int(x) for x in multihost_utils.broadcast_one_to_all(
        np.array([_MEND_PLANS.index(plan), newest], np.int64)))
    plan = _MEND_PLANS[i]
  if plan == 'none':
    return meta
  where = where or 'as process 0 found'  # another process followed process 0's listing
  params = None
  if plan == 'resumed':
    params, source = state['params'], f'the resumed checkpoint (step {resumed})'
  elif plan == 'checkpoint':
    restored, err = _attempt(lambda: ckpt.restore_step(best_step, abstract))
    if err is None:
      params, source = restored[0]['params'], f'checkpoints/{best_step}'
    else:
      plan = 'best' if newest >= 0 else 'reset'
      where = f'checkpoints/{best_step} could not be restored: {err}'
  if params is not None:
    ckpt.save_best(best_step, params, {'step': best_step, **_jsonable(meta.get('best') or {})})
    ckpt.wait()
    say(f'best/ lacked the best step so far ({best_step}): its save was cut off, or a best from '
        f'the lost part of the run replaced it (now in best.lost/); saved it again from {source}')
    return meta
  was = f'step {best_step}, token acc {float(meta.get("best_token_acc", -1.0)):.4f}'
  meta = {k: v for k, v in meta.items() if k != 'best'}
  kept = None
  if plan == 'best':
    kept, err = _attempt(lambda: ckpt.restore_best(newest, abstract['params']))
    if err is not None:
      where = f'{where}; best/{newest} could not be restored: {err}'
  if kept is not None:
    ev = {k: v for k, v in kept[1].items() if k != 'step'}
    meta.update(best_step=newest, best_token_acc=float(ev.get('token_acc', -1.0)), best=ev)
    now = f'the best record starts again from best/{newest}, the best parameters kept'
  else:
    meta.update(best_step=-1, best_token_acc=-1.0)
    now = 'the best record starts again at the next evaluation'
  say(f'warning: best/ lacks the best step so far ({was}); {where}: {now}')
  return meta


def _best_checksum(ckpt: Checkpointer, meta: dict, abstract) -> Any:
  """params_checksum of the parameters in best/ (those a run started from this one loads), or
  None (no best yet, or best/ unreadable: warned)."""
  step = int(meta.get('best_step', -1))
  if step < 0:
    return None
  restored, err = _attempt(lambda: ckpt.restore_best(step, abstract['params']))
  if err is not None:
    logging.warning('best/%d could not be read for its checksum: %s', step, err)
    return None
  return params_checksum(restored[0])


def restore_or_init(exp: Experiment, ckpt: Checkpointer, abstract, shardings,
                    say=print) -> tuple[dict, dict, bool]:
  """The train state to start from -> (state, meta, resumed). The order:

  1. resume: the workdir's latest checkpoint (params, optimizer state, step, data position);
  2. train.init_from: parameters of another run (a curriculum step), fresh optimizer; with
     train.init_from_part='backbone' only its backbone (e.g. a full-context run's, under GradMem);
  3. a pretrained backbone named in config.model (memory parameters initialised from it);
  4. fresh parameters from config.seed.
  """
  cfg = exp.config
  restored = ckpt.restore_latest(abstract)
  if restored is not None:
    state, meta = restored
    logging.info('resumed at step %d', int(state['step']))
    moved = ckpt.set_aside_best_after(int(state['step']))
    if moved:
      say(f'moved best checkpoint(s) {", ".join(f"{a} -> {b}" for a, b in moved)}: newer than the '
          f'resumed step {int(state["step"])}, from the part of the run that was lost')
    return state, _mend_best(ckpt, state, meta, abstract, say), True
  part = config_lib.check_init_from_part(cfg.train)
  params, meta = None, _fresh_meta()
  if cfg.train.init_from:  # the run it grows from, so a report can tell a chain that mixes runs
    meta['init_from'] = {'path': os.path.abspath(cfg.train.init_from), 'part': part or None}
  if cfg.train.init_from and part:
    sub, src = load_params(cfg.train.init_from, abstract['params'][part], part=part)
    meta['init_from'].update(step=src.get('step'), params_checksum=params_checksum(sub))
    # The memory parameters are initialised from the loaded backbone (the write head copies its
    # output embedding), with this run's seed: as from a pretrained checkpoint.
    params = jax.jit(lambda k, bb: exp.method.init_params(k, backbone_params=bb),
                     out_shardings=shardings['params'])(jax.random.PRNGKey(cfg.seed), sub)
    say(f'initialised the {part} from {cfg.train.init_from} (step {src.get("step")}); the memory '
        'parameters are fresh, built on it')
  elif cfg.train.init_from:
    params, src = load_params(cfg.train.init_from, abstract['params'])
    meta['init_from'].update(step=src.get('step'), params_checksum=params_checksum(params))
    say(f'initialised params from {cfg.train.init_from} (step {src.get("step")})')
  else:
    params = pretrained_params(exp, jax.random.PRNGKey(cfg.seed))
    if params is not None:
      params = jax.tree_util.tree_map(lambda x, a: np.asarray(x, a.dtype), params,
                                      abstract['params'])
      say(f'initialised the backbone from {pretrained_lib.source(exp.config.model)}')
  if params is None:
    state = jax.jit(functools.partial(init_state, exp), out_shardings=shardings)(
        jax.random.PRNGKey(cfg.seed))
  else:
    # Only the optimizer state is new: no random initialisation of parameters that are then
    # thrown away (for SmolLM2 that was a 30-layer init program, 53 s to compile on 2 CPU cores).
    state = jax.jit(functools.partial(state_from_params, exp), out_shardings=shardings,
                    donate_argnums=0)(jax.device_put(params, shardings['params']))
  return state, meta, False


def _state_is_finite(state) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(_host(state))
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


# ------------------------------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the outer parameters, evaluates, checkpoints; returns the results dict.

  One run per workdir: the main process holds <workdir>/run.lock throughout, and a second run
  on the same workdir raises WorkdirBusyError before touching anything (workdir_lock.py)."""
  if '://' in str(workdir):
    raise ValueError(f'workdir={workdir!r}: object-store URLs are not supported (the metrics log is '
                     'appended to); use a local or shared filesystem path, e.g. a GCS FUSE mount')
  mesh_lib.maybe_initialize_distributed(config)
  with contextlib.ExitStack() as stack:
    failed = None  # process 0's: a busy workdir, or one it cannot create or lock
    if jax.process_index() == 0:
      try:
        stack.enter_context(workdir_lock.hold(workdir))
      except Exception as e:  # noqa: BLE001 - re-raised below, after the others are told
        failed = e
    if jax.process_count() > 1:  # every process stops, not only the one that tried the lock
      from jax.experimental import multihost_utils
      code = 0 if failed is None else (
          1 if isinstance(failed, workdir_lock.WorkdirBusyError) else 2)
      code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
      if code and failed is None:  # not process 0: its error has the details
        raise (workdir_lock.WorkdirBusyError if code == 1 else RuntimeError)(
            f'workdir {workdir}: process 0 could not take it '
            f'({"another training process holds it" if code == 1 else "see its error"})')
    if failed is not None:
      raise failed
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # -- Set up: experiment, workdir, checkpoints, logs.
  exp = build_experiment(config)
  cfg = exp.config
  is_main = jax.process_index() == 0
  say = (lambda s: print(s, flush=True)) if is_main else (lambda s: None)
  policy = str(cfg.train.get('on_nonfinite', 'stop'))
  if policy not in ON_NONFINITE:
    raise ValueError(f'train.on_nonfinite={policy!r}: expected one of {ON_NONFINITE}')
  max_skips = int(cfg.train.get('max_skips', 10))
  debug_nans_was = jax.config.jax_debug_nans
  if cfg.train.get('debug_nans', False):
    jax.config.update('jax_debug_nans', True)
    say('jax_debug_nans is on: the first operation that produces a NaN raises (slow)')
  os.makedirs(workdir, exist_ok=True)
  max_steps = int(cfg.train.max_steps)
  ckpt = Checkpointer(workdir, cfg.train.keep_checkpoints)
  abstract, shardings = abstract_state(exp)

  # -- Restore or initialise (resume, init_from, pretrained, fresh).
  t_start = time.perf_counter()
  state, meta, resumed = restore_or_init(exp, ckpt, abstract, shardings, say)
  start_step = int(state['step'])
  env = None
  if is_main:  # only now: a workdir that cannot be resumed keeps its own config.json
    _write_config(workdir, cfg)
    before = environment.read(workdir)  # the sessions so far
    if start_step < max_steps or start_step == 0:  # a session that trains (or evaluates step 0)
      env = environment.record(workdir, start_step)  # its machine and software
      note = environment.resume_note(before, env)
      if note:
        say(f'warning: {note}')
    else:  # a finished run started again trains nothing: the session that finished it stays
      env = before[-1] if before else None
  elapsed_before = float(meta.get('elapsed_s', 0.0))
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start_step if resumed else None)
  evaluators = build_evaluators(exp)
  tf_eval = evaluators['teacher_forced']
  eval_K = None if cfg.eval.K < 0 else int(cfg.eval.K)
  b_shard = mesh_lib.batch_sharding(exp.mesh)
  step_fn = make_train_step(exp, guard=policy in ('stop', 'skip'))
  train_step = jax.jit(step_fn,
                       in_shardings=(shardings, {k: b_shard for k in BATCH_SPEC},
                                     mesh_lib.replicated(exp.mesh)),
                       out_shardings=(shardings, None), donate_argnums=(0,))
  data = Prefetcher(exp.task.train_batches(cfg.optim.batch_size, int(meta['data_index']),
                                           jax.process_index(), jax.process_count()))
  base_rng = jax.random.PRNGKey(cfg.seed + 1)
  progress = None  # started after the first step, so that compile time is not in the ETA
  say(f'workdir {workdir}: {exp.mem_cfg.method} K={exp.mem_cfg.K} on {exp.task.summary};'
      f' devices={exp.mesh.size} steps {start_step}->{max_steps}')

  # -- Train: log, evaluate (best checkpoint by token accuracy), checkpoint, stop rules.
  step = start_step
  last_loss = None  # until the first logged step
  if step < max_steps:
    stop_reason = 'max_steps'
  else:  # max_steps=0 on a fresh workdir: evaluate the initial (e.g. pretrained) parameters
    stop_reason = 'evaluation only (max_steps=0)' if step == 0 else 'already finished'
  log_every = max(1, min(50, int(cfg.train.eval_every)))

  state_finite = True  # of `state` (always, unless on_nonfinite='ignore')
  skips_in_a_row = 0
  meta.setdefault('skipped_steps', 0)
  global_batch = int(cfg.optim.batch_size)

  def checkpoint():
    if not state_finite:
      say(f'  step {step}: the state is not finite: checkpoint not saved '
          f'(latest: step {ckpt.latest_step()})')
      return
    meta['elapsed_s'] = elapsed_before + time.perf_counter() - t_start
    ckpt.save(step, state, _jsonable(meta))

  def nonfinite_stop(flags, index, why):
    """`state` is the last good state (the guarded step returned it unchanged)."""
    bad = [n for n, ok in zip(step_fn.finite_names, flags) if not ok]
    if ckpt.latest_step() != step and _state_is_finite(state):
      checkpoint()
    ckpt.wait()
    good = ckpt.latest_step()
    good_dir = (os.path.join(os.path.abspath(workdir), 'checkpoints', str(good))
                if good is not None else None)
    lo = index - global_batch
    record = {'step': step + 1, 'state_step': step, 'policy': policy, 'reason': why,
              'first_nonfinite': bad[0], 'nonfinite': bad,
              'flags': {n: bool(f) for n, f in zip(step_fn.finite_names, flags)},
              'data_index_start': lo, 'data_index_end': index,
              'sample_indices': list(range(lo, index)),
              'step_rng': f'fold_in(PRNGKey(seed + 1) = PRNGKey({int(cfg.seed) + 1}), {step})',
              'last_good_checkpoint': good_dir, 'last_good_step': good}
    path = os.path.join(os.path.abspath(workdir), f'nonfinite_step_{step + 1}.json')
    if is_main:
      _write_json(path, record)
    also = f' (then also: {", ".join(bad[1:])})' if len(bad) > 1 else ''
    where = (f'last good checkpoint: {good_dir} (step {good})' if good is not None else
             'no checkpoint was saved')
    raise NonFiniteError(
        f'non-finite values at step {step + 1} ({why}): {_describe_flag(bad[0], exp.mem_cfg.K)} '
        f'went non-finite first{also}. The update was not applied and no non-finite state was '
        f'saved; {where}. The batch (training samples {lo}..{index - 1}) is recorded in {path}; '
        'rerun the same command with --config.train.debug_nans=True to replay the step from the '
        'last good checkpoint under jax_debug_nans.')

  try:
    while step < max_steps:
      index, local = next(data)
      state, metrics = train_step(state, mesh_lib.global_batch(local, exp.mesh), base_rng)
      flags = np.asarray(_host(metrics['finite']))  # every step: a few bytes
      if not flags.all():
        if policy == 'stop':
          nonfinite_stop(flags, index, "train.on_nonfinite='stop'")
        elif policy == 'skip':
          skips_in_a_row += 1
          meta['skipped_steps'] += 1
          meta['data_index'] = index  # the batch is consumed; the state is unchanged
          first = [n for n, ok in zip(step_fn.finite_names, flags) if not ok][0]
          say(f'  step {step + 1}: {_describe_flag(first, exp.mem_cfg.K)} is not finite: '
              f'update skipped ({skips_in_a_row} in a row, {meta["skipped_steps"]} in all)')
          if skips_in_a_row >= max_skips:
            meta['data_index'] = index - global_batch  # a resume replays the last skipped batch
            nonfinite_stop(flags, index, f"train.on_nonfinite='skip': {skips_in_a_row} non-finite "
                           f'steps in a row (train.max_skips={max_skips})')
          continue
        else:  # 'ignore'
          was = state_finite
          state_finite = bool(flags[step_fn.finite_names.index('state')])
          if was:
            names = [n for n, ok in zip(step_fn.finite_names, flags) if not ok]
            say(f'  step {step + 1}: non-finite {", ".join(names)} '
                "(train.on_nonfinite='ignore': training goes on; non-finite states are not "
                'checkpointed)')
      else:
        skips_in_a_row = 0
        state_finite = True
      step += 1
      meta['data_index'] = index
      if step % log_every == 0 or step == max_steps or cfg.train.log_every_s == 0:
        last_loss = _log_train(writer, step, _host(metrics))
      if progress is None:
        progress = Progress(max_steps, cfg.train.log_every_s, step, enabled=is_main)
      else:
        progress.maybe_report(step, last_loss, meta['last_em'])
      stop_now = False
      if step % cfg.train.eval_every == 0 or step == max_steps:
        ev = tf_eval(state['params'], eval_K)
        meta['last_em'] = ev.get('em')
        writer.write(step, {f'val/{k}': v for k, v in ev.items()})
        say(_eval_line(step, ev))
        if state_finite and ev.get('token_acc', 0.0) > meta['best_token_acc']:
          meta.update(best_token_acc=ev['token_acc'], best_step=step, best=ev)
          ckpt.save_best(step, state['params'], {'step': step, **_jsonable(ev)})
        if cfg.train.target_em and ev.get('em', 0.0) >= cfg.train.target_em - 1e-9:
          stop_reason, stop_now = f'target EM {cfg.train.target_em} reached', True
      minutes = (elapsed_before + time.perf_counter() - t_start) / 60
      if cfg.train.max_minutes and minutes >= cfg.train.max_minutes:
        stop_reason, stop_now = f'time limit {cfg.train.max_minutes} min', True
      if step % cfg.train.checkpoint_every == 0 or step == max_steps or stop_now:
        checkpoint()
      if stop_now:
        break
    if ckpt.latest_step() != step:  # the final state is always resumable/loadable
      checkpoint()
  except NonFiniteError:
    ckpt.close()
    writer.close()
    raise
  finally:
    data.close()
    jax.config.update('jax_debug_nans', debug_nans_was)
    ckpt.wait()
    writer.flush()
  session_s = time.perf_counter() - t_start

  # -- Finish: evaluate the final parameters with every configured evaluator, write results.
  # `best` is the best validation result seen (its params are in best/, as the authors keep the
  # best by token accuracy); `final` evaluates the last parameters.
  final_eval = evaluate_all(evaluators, state['params'], eval_K)
  results = {
      **exp.identity(), 'identity_fields': list(exp.identity()),
      'method_fields': [f for f in exp.identity() if f not in exp.task.identity()],
      'task_summary': exp.task.summary, 'memory_floats': exp.memory_floats,
      'steps': step, 'stop_reason': stop_reason,
      'wall_time_s': elapsed_before + session_s,
      'steps_per_s': (step - start_step) / max(session_s, 1e-9),
      'best_step': meta.get('best_step'),
      'best': _jsonable(meta.get('best') or final_eval), 'final': _jsonable(final_eval),
      'seed': int(cfg.seed), 'devices': exp.mesh.size,
      'skipped_steps': int(meta.get('skipped_steps', 0)),
      'params_checksum': params_checksum(state['params']),
      # The parameters in best/ (params_checksum's sum), and the run this one grew from (with
      # the checksum of the parameters it loaded): a report checks a curriculum chain with them.
      'best_params_checksum': _best_checksum(ckpt, meta, abstract),
      'init_from': meta.get('init_from'),
      'environment': env,  # the finishing session's; every session's in environment.jsonl
  }
  print(f'process {jax.process_index()}/{jax.process_count()}: params checksum '
        f'{results["params_checksum"]!r}', flush=True)
  if jax.process_count() == 1:
    results.update(flops_per_sample(exp, state['params']))
  if is_main:
    _write_json(os.path.join(workdir, 'results.json'), results)
    writer.write(step, {f'final/{k}': v for k, v in final_eval.items()})
    say(results_table(results))
  writer.close()
  ckpt.close()
  return results


def _log_train(writer: MetricsWriter, step: int, m: dict) -> float:
  loss = float(m['loss'])
  row = {'loss': loss, 'grad_norm': float(m['grad_norm']), 'lr': float(m['lr']),
         'param_norm': float(m['param_norm'])}
  row.update({f'train/{k}': v for k, v in summarize_sums(m).items()})
  writer.write(step, row)
  return loss


def _eval_line(step: int, ev: dict) -> str:
  wl = ev.get('inner/write_loss')
  return (f'  eval step {step}: EM {100 * ev.get("em", 0):.2f}%  token acc '
          f'{100 * ev.get("token_acc", 0):.2f}%  target loss {ev.get("target_loss", 0):.4f}'
          + (f'  write loss {wl[0]:.3f}->{wl[-1]:.3f}' if wl else ''))


def _write_json(path: str, obj: Any) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(path + '.tmp', path)


def params_checksum(params) -> float:
  """Sum of |x| over every parameter (float64 on the host): equal on every process."""
  leaves = jax.tree_util.tree_leaves(mesh_lib.to_host(params))
  return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))


def _jsonable(d: Any) -> Any:
  if isinstance(d, dict):
    return {k: _jsonable(v) for k, v in d.items()}
  if isinstance(d, (list, tuple)):
    return [_jsonable(v) for v in d]
  if isinstance(d, (np.floating, np.integer)):
    return d.item()
  if isinstance(d, np.ndarray):
    return d.tolist()
  return d


def results_table(r: dict) -> str:
  """The console summary of a results dict: its identity fields, then the outcome."""
  b, f = r['best'], r['final']
  rows = [(k, r.get(k)) for k in r.get('identity_fields', ())]
  rows += [
      ('steps', r['steps']), ('wall time', format_duration(r['wall_time_s'])),
      ('stopped', r['stop_reason']), ('best step', r['best_step']),
      ('best val EM', f'{100 * b.get("em", 0):.2f}%'),
      ('best val token acc', f'{100 * b.get("token_acc", 0):.2f}%'),
      ('final val EM', f'{100 * f.get("em", 0):.2f}%'),
      ('final val token acc', f'{100 * f.get("token_acc", 0):.2f}%'),
      ('final target loss', f'{f.get("target_loss", float("nan")):.4f}'),
  ]
  rows += [(f'final {k}', f'{100 * f[k]:.2f}%') for k in f if k.startswith('gen_')]
  width = max(len(k) for k, _ in rows)
  lines = ['| ' + 'result'.ljust(width) + ' | value |', '|' + '-' * (width + 2) + '|-------|']
  lines += [f'| {k.ljust(width)} | {v} |' for k, v in rows]
  return '\n'.join(lines)
