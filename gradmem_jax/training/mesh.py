"""Device mesh, shardings and multi-host input (JAX's own SPMD machinery only).

Mesh axes ('data', 'fsdp'). The batch is split over both axes (every device holds different
samples); parameters and optimizer state are replicated, or, with mesh.fsdp > 1, each leaf is
sharded over 'fsdp' along its first axis whose size that divides.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def maybe_initialize_distributed(config) -> None:
  """Multi-host start-up when config.distributed is set or JAX_COORDINATOR_ADDRESS is.

  On TPU pods and SLURM/Open MPI/Kubernetes clusters `jax.distributed.initialize()` finds the
  coordinator itself (config.distributed=True). Elsewhere (several processes on one machine, bare
  multi-GPU hosts) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  addr = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not (config.get('distributed', False) or addr):
    return
  if _distributed_is_initialized():
    return
  if addr:
    jax.distributed.initialize(coordinator_address=addr,
                               num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                               process_id=int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()


def finish_distributed() -> None:
  """End of a multi-process run: wait for every process at a named barrier, then leave the
  distributed runtime explicitly. Otherwise the shutdown barrier runs from interpreter teardown at
  unrelated times on each process; a process that gets there more than the shutdown timeout after
  another aborts the run (seen on a loaded 2-core CI machine)."""
  if jax.process_count() == 1 or not _distributed_is_initialized():
    return
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices('gradmem_jax_run_finished')
  jax.distributed.shutdown()


def _distributed_is_initialized() -> bool:
  fn = getattr(jax.distributed, 'is_initialized', None)  # public since jax 0.4.3x
  return bool(fn()) if fn is not None else jax.process_count() > 1


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  fsdp = int(mesh_cfg.fsdp)
  data = int(mesh_cfg.data)
  if data == -1:
    if n % fsdp:
      raise ValueError(f'mesh.fsdp={fsdp} does not divide the {n} devices')
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f'mesh.data={data} x mesh.fsdp={fsdp} must equal the number of devices ({n})')
  return Mesh(np.array(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  if fsdp > 1:
    for i, s in enumerate(shape):
      if s % fsdp == 0 and s >= fsdp:
        return P(*([None] * i + ['fsdp']))
  return P()


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  fsdp = mesh.shape['fsdp']
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), abstract_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles the global batch array from this host's slice (one slice per process)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree: Any) -> Any:
  """Fetches (replicated or fully addressable) arrays as numpy on every host."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree_util.tree_map(fetch, tree)
