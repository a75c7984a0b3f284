"""Orbax checkpoints: resumable latest checkpoints, the best parameters, and params-only loading.

Layout in a workdir:
  checkpoints/<step>/{state, meta}   TrainState (step, params, optimizer state) + JSON metadata
                                     (data-iterator index, best so far, elapsed time)
  best/<step>/{params, meta}         parameters with the best validation token accuracy

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
or kill leaves the previous checkpoints intact and never a half-written one that restore would
pick up.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = workdir
    # Two managers save asynchronously side by side (often at the same step); across processes
    # their finalize barriers must not share names, or one manager's barrier on one host can pair
    # with the other's on another host and hang (seen as a shutdown-barrier timeout with 2 processes).
    mp = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    self.latest = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True,
                                             multiprocessing_options=mp('gradmem_latest')),
        item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'best')),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
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

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    step = self.latest.latest_step()
    if step is None:
      return None
    _check_compatible(self.latest, step, 'state', abstract_state, self.workdir)
    r = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(abstract_state)), meta=ocp.args.JsonRestore()))
    return r['state'], dict(r['meta'])

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _check_compatible(manager, step, item, abstract, where):
  """Compares the stored tree with the expected one; errors name the first mismatch."""
  path = os.path.join(str(manager.directory), str(step), item)
  try:
    md = ocp.StandardCheckpointer().metadata(path)
    stored = _paths_and_shapes(getattr(md, 'item_metadata', md))
  except Exception:  # noqa: BLE001 - a best-effort pre-check; restore still validates shapes
    return
  _compare(stored, _paths_and_shapes(abstract), where, step)


def _compare(stored: dict, expected: dict, where, step) -> None:
  missing = sorted(set(expected) - set(stored))
  extra = sorted(set(stored) - set(expected))
  if missing or extra:
    raise ValueError(f'checkpoint {where} step {step} does not match this model: '
                     f'missing {missing[:5]} unexpected {extra[:5]}')
  for k, shape in expected.items():
    if tuple(stored[k]) != tuple(shape):
      raise ValueError(f'checkpoint {where} step {step}: parameter {k} has shape '
                       f'{tuple(stored[k])}, this model expects {tuple(shape)}')


def load_params(path: str, abstract_params: Any) -> tuple[Any, dict]:
  """Parameters from a run: `path` is a workdir (best, else latest checkpoint) or a checkpoint
  manager directory (`<workdir>/best` or `<workdir>/checkpoints`). Returns (params, meta)."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint directory at {path}')
  candidates = []
  for sub, item in (('best', 'params'), ('checkpoints', 'state')):
    candidates.append((os.path.join(path, sub), item))
  base = os.path.basename(path)
  if base in ('best', 'checkpoints'):
    candidates = [(path, 'params' if base == 'best' else 'state')]
  for directory, item in candidates:
    if not os.path.isdir(directory):
      continue
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_names=(item, 'meta'))
    step = mngr.latest_step()
    if step is None:
      continue
    if item == 'params':
      _check_compatible(mngr, step, 'params', abstract_params, directory)
      r = mngr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(abstract_params)),
          meta=ocp.args.JsonRestore()))
      return r['params'], dict(r['meta'], step=step)
    # A resumable checkpoint: restore it whole (its optimizer state may differ from ours),
    # onto this process's devices whatever topology wrote it, and keep the parameters.
    r = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored_target(directory, step, 'state')),
        meta=ocp.args.JsonRestore()))
    params = r['state']['params']
    _check_tree(params, abstract_params, directory, step)
    params = jax.tree_util.tree_map(lambda x, a: jax.device_put(x, a.sharding)
                                    if getattr(a, 'sharding', None) is not None else x,
                                    params, abstract_params)
    return params, dict(r['meta'], step=step)
  raise FileNotFoundError(f'no finished checkpoint under {path} (looked for best/ and '
                          'checkpoints/)')


def _stored_target(directory: str, step: int, item: str) -> Any:
  """Abstract arrays (shape, dtype) of a stored tree, replicated over this process's devices."""
  md = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), item))
  tree = getattr(md, 'item_metadata', md)
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('d',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                tree)


def _check_tree(params, abstract, where, step):
  _compare(_paths_and_shapes(params), _paths_and_shapes(abstract), where, step)
