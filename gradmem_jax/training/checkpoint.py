"""Orbax checkpoints: resumable latest checkpoints, the best parameters, and params-only loading.

Layout in a workdir:
  checkpoints/<step>/{state, meta}   TrainState (step, params, optimizer state) + JSON metadata
                                     (data-iterator index, best so far, elapsed time)
  best/<step>/{params, meta}         parameters with the best validation token accuracy
  checkpoints.damaged/<step>         damaged checkpoints moved aside by a resume (kept for a look)

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
or kill leaves the previous checkpoints intact and never a half-written one that restore would
pick up. A checkpoint can still be damaged after the fact (a copy that stopped half way, a full
disk, a file truncated or garbled by hand): every checkpoint is checked before it is used.

Two kinds of failure are told apart, because they call for different actions:
  damaged       the files are incomplete or unreadable (a missing commit marker, a missing or
                unreadable metadata file or item, data that does not decode). A resume falls back
                to the newest good checkpoint with a warning naming both; with none good it stops
                with an error listing every checkpoint and its reason (it never starts over).
  incompatible  the checkpoint is intact but holds a different model or optimizer (a parameter
                missing, unexpected, or of another shape). Falling back would not help (an older
                checkpoint of the same run has the same shapes) and would hide a config mistake:
                this is an error naming the first mismatching parameter and both shapes.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

COMMIT_MARKER = 'commit_success.txt'       # written by orbax when a save is complete
STEP_METADATA = '_CHECKPOINT_METADATA'     # orbax's per-step metadata (JSON)
TREE_METADATA = '_METADATA'                # the stored tree: paths, shapes, dtypes (JSON)
DAMAGED_DIR = 'checkpoints.damaged'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used."""


class DamagedCheckpointError(CheckpointError):
  """No usable checkpoint: the ones found are incomplete or unreadable."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
  """An intact checkpoint that holds a different model (or optimizer) than the one expected."""


class DamagedCheckpointWarning(UserWarning):
  """A damaged checkpoint was skipped in favour of an older, good one."""


class _Damaged(Exception):
  """Internal: why one checkpoint is unusable."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def _abstract(tree: Any) -> Any:
  def conv(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree_util.tree_map(conv, tree)


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _paths_and_shapes(tree: Any) -> dict:
  """{'a/b/c': shape} (dict keys, attributes and indices written alike)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_name(k) for k in p): tuple(getattr(x, 'shape', ())) for p, x in flat}


def _one_line(e: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(e).split()) or '(no message)'
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(e).__name__}: {text}'


# ------------------------------------------------------------------------------------------------
# Checking one checkpoint.


def _step_entries(directory: str) -> list[int]:
  """Steps present in a manager directory, newest first (every `<digits>` entry, even one that is
  not a directory, so that damage is reported rather than skipped silently)."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)


def _check_files(step_dir: str, items: tuple[str, ...]) -> None:
  """The files every finished save leaves: raises _Damaged naming the first one missing."""
  if not os.path.isdir(step_dir):
    raise _Damaged('it is not a directory')
  if not os.path.isfile(os.path.join(step_dir, COMMIT_MARKER)):
    raise _Damaged(f'the commit marker {COMMIT_MARKER} is missing (the save did not finish, or the '
                   'copy is incomplete)')
  _json_object(os.path.join(step_dir, STEP_METADATA), STEP_METADATA)
  for item in items:
    if not os.path.isdir(os.path.join(step_dir, item)):
      raise _Damaged(f'the item {item}/ is missing')


def _json_object(path: str, what: str) -> dict:
  """A JSON object file of a checkpoint; anything else is damage named by `what`."""
  if not os.path.isfile(path):
    raise _Damaged(f'{what} is missing')
  try:
    with open(path, 'rb') as f:
      parsed = json.loads(f.read().decode('utf-8'))
  except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise _Damaged(f'{what} is not readable JSON ({_one_line(e)})') from None
  if not isinstance(parsed, dict):
    raise _Damaged(f'{what} is not a JSON object')
  return parsed


def _stored_tree(item_dir: str) -> Any:
  """The stored tree of array metadata (shapes, dtypes) of a StandardSave item."""
  name = os.path.basename(item_dir)
  parsed = _json_object(os.path.join(item_dir, TREE_METADATA),
                        f'{name}/{TREE_METADATA} (the stored tree)')
  if not parsed:
    raise _Damaged(f'{name}/{TREE_METADATA} (the stored tree) is empty or not a JSON object')
  ckptr = ocp.StandardCheckpointer()
  try:
    md = ckptr.metadata(os.path.abspath(item_dir))  # tensorstore misreads a relative path
  except Exception as e:  # noqa: BLE001 - any failure to read it is damage
    raise _Damaged(f'the array metadata of {name}/ is unreadable ({_one_line(e)})') from None
  finally:
    ckptr.close()
  tree = getattr(md, 'item_metadata', md)
  tree = getattr(tree, 'tree', tree)
  if tree is None or not jax.tree_util.tree_leaves(tree):
    # Orbax logs the cause and returns None: the array metadata lives in the data files.
    raise _Damaged(f'the array metadata of {name}/ cannot be read (its data files under {name}/ '
                   'are missing, truncated or garbled)')
  return tree


def _mismatch(stored: dict, expected: dict) -> Optional[str]:
  """The first difference between stored and expected {path: shape}, in words, or None."""
  # The expected tree's (flattening) order, the model parameters before the optimizer state
  # (which mirrors them): the first name is the one to look for in the config.
  order = sorted(expected, key=lambda k: not k.startswith('params/'))
  for k in order:
    shape = expected[k]
    if k not in stored:
      unexpected = sorted(set(stored) - set(expected))
      extra = f'; the checkpoint has instead {unexpected[:3]}' if unexpected else ''
      return (f'parameter {k} (shape {tuple(shape)} in this model) is missing from the '
              f'checkpoint{extra}')
    if tuple(stored[k]) != tuple(shape):
      return (f'parameter {k} has shape {tuple(stored[k])} in the checkpoint, this model expects '
              f'{tuple(shape)}')
  unexpected = [k for k in stored if k not in expected]
  if unexpected:
    return (f'the checkpoint holds parameter {unexpected[0]} (shape {tuple(stored[unexpected[0]])})'
            f' that this model does not have ({len(unexpected)} such in all)')
  return None


def _incompatible(step_dir: str, what: str) -> IncompatibleCheckpointError:
  return IncompatibleCheckpointError(
      f'checkpoint {step_dir} does not match this model: {what}. The checkpoint itself is intact: '
      'load it with the configuration it was trained with (its workdir holds config.json), or use '
      'another workdir / train.init_from.')


def _compare(stored: dict, expected: dict, step_dir: str) -> None:
  what = _mismatch(stored, expected)
  if what is not None:
    raise _incompatible(step_dir, what)


def _restore_step(mngr, step: int, item: str, target: Any) -> tuple[Any, dict]:
  """Restores (item, meta) of a step whose files and tree were checked; damage -> _Damaged."""
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  except Exception as e:  # noqa: BLE001 - a missing, truncated or garbled JSON file
    raise _Damaged(f'reading meta/ failed ({_one_line(e)})') from None
  if not isinstance(meta, dict):
    raise _Damaged(f'meta/ is not a JSON object (got {type(meta).__name__})')
  try:
    r = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
  except Exception as e:  # noqa: BLE001 - tensorstore/orbax errors: the data does not decode
    raise _Damaged(f'reading {item}/ failed ({_one_line(e)})') from None
  return r[item], dict(meta)


# ------------------------------------------------------------------------------------------------
# Saving and resuming.


# How long a background save may take to commit before Orbax gives up (its default: 1200 s). The
# clock is wall time, so a run suspended mid-save (Ctrl-Z, SIGSTOP while something else is timed, a
# host suspended) used to die on resume with "ChainedFuture ... timed out" although nothing had
# hung: a claims run paused for 98 minutes, 2026-11-27. A day is longer than any pause we expect
# and still ends a save that truly hangs. Orbax also uses it as the multi-host finalize barrier's
# timeout: a dead peer is normally failed sooner by JAX's coordination service, but if it is not,
# the other processes wait up to this long.
ASYNC_SAVE_TIMEOUT_S = 24 * 3600


LOST_BEST_DIR = 'best.lost'


def _free_path(root: str, step: int) -> str:
  """root/step, or root/step.1, root/step.2, ... when taken."""
  dest, n = os.path.join(root, str(step)), 1
  while os.path.exists(dest):
    dest = os.path.join(root, f'{step}.{n}')
    n += 1
  return dest


def _move_dirs(moves: list[tuple[str, str]], barrier: str) -> None:
  """Renames checkpoint directories on process 0, between barriers on every process. A move that
  fails is a warning: the run goes on, and saving that step again fails, clearly."""
  multi = jax.process_count() > 1
  if multi:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f'{barrier}_pre')
  if jax.process_index() == 0:
    for src, dest in moves:
      try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(src, dest)
      except OSError as e:
        warnings.warn(f'could not move the checkpoint {src} to {dest} ({e}): move or delete it by '
                      'hand before the run saves that step again', DamagedCheckpointWarning,
                      stacklevel=3)
  if multi:
    multihost_utils.sync_global_devices(f'{barrier}_post')


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2, async_timeout_s: int = ASYNC_SAVE_TIMEOUT_S):
    self.workdir = workdir
    async_options = ocp.AsyncOptions(timeout_secs=int(async_timeout_s))
    # Two managers save asynchronously side by side (often at the same step); across processes
    # their finalize barriers must not share names, or one manager's barrier on one host can pair
    # with the other's on another host and hang (seen as a shutdown-barrier timeout with 2 processes).
    mp = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    self.latest = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True,
                                             async_options=async_options,
                                             multiprocessing_options=mp('gradmem_latest')),
        item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'best')),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             async_options=async_options,
                                             multiprocessing_options=mp('gradmem_best')),
        item_names=('params', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 meta=ocp.args.JsonSave(meta)), force=True)

  def best_steps(self) -> list[int]:
    """The steps best/ holds, as Orbax lists them (its temporary folders of saves in flight
    are not listed; a save in flight is waited for first)."""
    self.best.wait_until_finished()
    return sorted(self.best.all_steps())

  def step_damage(self, which: str, step: int) -> Optional[str]:
    """None when `<workdir>/<which>/<step>` (which: 'checkpoints' or 'best') has every file a
    finished save leaves and a readable tree, else what is wrong with it."""
    item = {'checkpoints': 'state', 'best': 'params'}[which]
    step_dir = os.path.join(self.workdir, which, str(step))
    try:
      _check_files(step_dir, (item, 'meta'))
      _stored_tree(os.path.join(step_dir, item))
    except _Damaged as d:
      return d.reason
    return None

  def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of checkpoints/<step>, onto `abstract_state`'s shardings (called by every
    process, like restore_latest). Damage raises DamagedCheckpointError naming the step."""
    return self._restore(self.latest, 'checkpoints', step, 'state', abstract_state)

  def restore_best(self, step: int, abstract_params: Any) -> tuple[Any, dict]:
    """(params, meta) of best/<step>, as restore_step."""
    return self._restore(self.best, 'best', step, 'params', abstract_params)

  def _restore(self, mngr, which: str, step: int, item: str, abstract: Any):
    damage = self.step_damage(which, step)
    if damage is None:
      try:
        return _restore_step(mngr, step, item, _abstract(abstract))
      except _Damaged as d:
        damage = d.reason
    raise DamagedCheckpointError(
        f'checkpoint {os.path.join(self.workdir, which, str(step))} is damaged: {damage}. '
        'Move it away and start the run again.')

  def set_aside_best_after(self, step: int) -> list[tuple[str, str]]:
    """Moves best checkpoints newer than `step` (the step a run resumes from) to
    `<workdir>/best.lost/`: they come from the part of the run that was lost (killed after the
    best save and before the resumable one), which the resumed run trains again, and Orbax would
    refuse to save their steps again. Nothing is deleted: with one best kept, such a copy can be the
    only best parameters on disk until the resumed run saves its own. Returns (from, to) paths."""
    self.best.wait_until_finished()
    newer = [s for s in self.best.all_steps() if s > step]
    if not newer:
      return []
    moves = [(os.path.join(str(self.best.directory), str(s)),
              _free_path(os.path.join(os.path.abspath(self.workdir), LOST_BEST_DIR), s))
             for s in newer]
    _move_dirs(moves, 'gradmem_best_set_aside')
    self.best.reload()
    return moves

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """(state, meta) of the newest good checkpoint, or None when there is no checkpoint at all.

    Damaged checkpoints newer than the good one are skipped with a warning naming both, and moved
    to `<workdir>/checkpoints.damaged/` so that the run can save those steps again. Raises
    DamagedCheckpointError when every checkpoint is damaged (nothing is moved then) and
    IncompatibleCheckpointError when an intact checkpoint holds another model.
    """
    directory = str(self.latest.directory)
    steps = _step_entries(directory)
    if not steps:
      return None
    expected = _paths_and_shapes(abstract_state)
    damaged: list[tuple[int, str, str]] = []
    for step in steps:
      step_dir = os.path.join(directory, str(step))
      try:
        _check_files(step_dir, ('state', 'meta'))
        stored = _paths_and_shapes(_stored_tree(os.path.join(step_dir, 'state')))
        what = _mismatch(stored, expected)
        if what is not None:
          err = _incompatible(step_dir, what)
          if damaged:
            err = IncompatibleCheckpointError(f'{err} (newer checkpoints were damaged: '
                                              f'{_list_damaged(damaged)})')
          raise err
        state, meta = _restore_step(self.latest, step, 'state', _abstract(abstract_state))
      except _Damaged as d:
        damaged.append((step, step_dir, d.reason))
        continue
      if damaged:
        self._set_aside(damaged, step, step_dir)
      return state, meta
    raise DamagedCheckpointError(
        f'no usable checkpoint in {directory}: every checkpoint there is damaged: '
        f'{_list_damaged(damaged)}. Nothing was changed and training did not start over: move '
        'the damaged checkpoints away (or use a fresh workdir) to start from scratch.')

  def _set_aside(self, damaged, good_step: int, good_dir: str) -> None:
    dest_root = os.path.join(os.path.abspath(self.workdir), DAMAGED_DIR)
    moves = [(path, _free_path(dest_root, step)) for step, path, _ in damaged]
    msg = (f'checkpoint {damaged[0][1]} (step {damaged[0][0]}) is damaged: {damaged[0][2]}; '
           f'resuming from the previous good checkpoint {good_dir} (step {good_step}).')
    if len(damaged) > 1:
      msg += f' Also damaged and skipped: {_list_damaged(damaged[1:])}.'
    msg += f' The damaged checkpoint(s) are moved to {dest_root}.'
    warnings.warn(msg, DamagedCheckpointWarning, stacklevel=3)
    logging.warning('%s', msg)
    # Moved aside so that the run can save these steps again (orbax refuses an existing step).
    _move_dirs(moves, 'gradmem_checkpoint_set_aside')
    self.latest.reload()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _list_damaged(damaged) -> str:
  return '; '.join(f'step {s} at {p}: {r}' for s, p, r in damaged)


# ------------------------------------------------------------------------------------------------
# Loading parameters (train.init_from, evaluation).


def load_params(path: str, abstract_params: Any, part: str = '') -> tuple[Any, dict]:
  """Parameters from a run. `path` is a workdir (best, else latest checkpoint), a checkpoint
  manager directory (`<workdir>/best` or `<workdir>/checkpoints`: its newest step), or one step
  (`<workdir>/checkpoints/<step>`, `<workdir>/best/<step>`). Returns (params, meta).

  With `part` (a top-level key such as 'backbone'), only that subtree is compared and returned:
  `abstract_params` is then the subtree, and the run may have used another memory method.

  No fallback here: a damaged checkpoint raises DamagedCheckpointError and one of another model
  IncompatibleCheckpointError, each naming the path and the reason."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint directory at {path}')
  base, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
  item_of = {'best': 'params', 'checkpoints': 'state'}
  if base.isdigit() and parent in item_of:
    return _load_step_params(os.path.dirname(path), int(base), item_of[parent], abstract_params,
                             part)
  if base in item_of:
    candidates = [(path, item_of[base])]
  else:
    candidates = [(os.path.join(path, sub), item) for sub, item in item_of.items()]
  for directory, item in candidates:
    steps = _step_entries(directory)
    if steps:
      return _load_step_params(directory, steps[0], item, abstract_params, part)
  raise FileNotFoundError(f'no finished checkpoint under {path} (looked for best/ and '
                          'checkpoints/)')


def _load_step_params(directory: str, step: int, item: str, abstract_params: Any,
                      part: str = ''):
  step_dir = os.path.join(directory, str(step))
  try:
    _check_files(step_dir, (item, 'meta'))
    stored_tree = _stored_tree(os.path.join(step_dir, item))
    stored = _paths_and_shapes(stored_tree)
    if item == 'state':
      stored = {k[len('params/'):]: v for k, v in stored.items() if k.startswith('params/')}
    expected = _paths_and_shapes(abstract_params)
    if part:  # only this subtree; the rest may be another method's
      if not any(k.startswith(part + '/') for k in stored):
        raise _incompatible(step_dir, f'it has no {part!r} parameters')
      stored = {k: v for k, v in stored.items() if k.startswith(part + '/')}
      expected = {f'{part}/{k}': v for k, v in expected.items()}
    _compare(stored, expected, step_dir)
    if item == 'params' and not part:
      target = _abstract(abstract_params)
    else:
      # A resumable checkpoint (its optimizer state may differ from ours) or another run's tree:
      # restore it whole onto this process's devices, whatever topology wrote it. A part goes
      # straight onto this model's shardings (an FSDP backbone is never gathered).
      target = _replicated_target(stored_tree)
      if part:
        (target['params'] if item == 'state' else target)[part] = _abstract(abstract_params)
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_names=(item, 'meta'))
    try:
      tree, meta = _restore_step(mngr, step, item, target)
    finally:
      mngr.close()
    params = tree['params'] if item == 'state' else tree
    if part:
      params = params[part]
    elif item == 'state':
      params = jax.tree_util.tree_map(lambda x, a: jax.device_put(x, a.sharding)
                                      if getattr(a, 'sharding', None) is not None else x,
                                      params, abstract_params)
  except _Damaged as d:
    others = [os.path.join(directory, str(s)) for s in _step_entries(directory) if s != step]
    if os.path.basename(directory) == 'best':
      others += [os.path.join(os.path.dirname(directory), 'checkpoints')]
    hint = (f' Pass another one explicitly if it is good: {others}.') if others else ''
    raise DamagedCheckpointError(f'checkpoint {step_dir} is damaged: {d.reason}.{hint}') from None
  return params, dict(meta, step=step)


def _replicated_target(tree: Any) -> Any:
  """Abstract arrays (shape, dtype) of a stored tree, replicated over this process's devices."""
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('d',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                tree)
