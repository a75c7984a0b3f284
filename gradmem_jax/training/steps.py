"""Jitted steps: `train_step(state, batch, rng) -> (state, metrics)` (micro-batched gradient
accumulation, metrics computed inside the step) and `eval_step(params, batch) -> sums`.

Every train step also returns `metrics['finite']`, one small boolean vector (the host reads it
every step): per inner step k the WRITE loss and the inner gradient norm, then the written
memory's norm |M_K|, the outer loss, the global gradient norm and the updated state (params and
optimizer state), in the order they are computed; `train_step.finite_names` names its entries
(filled when the step is traced). With `guard=True` a step with any non-finite entry returns its
input state unchanged (`where(ok, new, old)`: bit-identical to the unguarded step when finite).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gradmem_jax.memory import eval_sums, outer_loss
from gradmem_jax.training import mesh as mesh_lib
from gradmem_jax.training.experiment import Experiment
from gradmem_jax.training.optim import learning_rate_schedule

tree_norm = optax.tree.norm if hasattr(optax, 'tree') and hasattr(optax.tree, 'norm') else (
    optax.global_norm)


def _split_micro(batch: dict, n_micro: int, mesh) -> dict:
  """[B, ...] -> [n_micro, B / n_micro, ...]; micro-batch i takes samples i, i + n_micro, ... so
  every micro-batch is spread over all data-parallel devices."""
  def split(x):
    mb = x.shape[0] // n_micro
    y = x.reshape((mb, n_micro) + x.shape[1:]).swapaxes(0, 1)
    spec = P(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(split, batch)


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  ok = jnp.bool_(True)
  for x in leaves:
    ok = ok & jnp.all(jnp.isfinite(x))
  return ok


def finite_flags(loss, grad_norm, sums: dict, new_state) -> tuple[jax.Array, list[str]]:
  """-> (bool vector, its names) in computation order (see the module docstring)."""
  parts, names = [], []
  wl, gn = sums.get('inner/write_loss'), sums.get('inner/grad_norm')
  if wl is not None and gn is not None and wl.ndim == 1 and wl.shape == gn.shape:
    parts.append(jnp.stack([jnp.isfinite(wl), jnp.isfinite(gn)], axis=1).reshape(-1))
    for k in range(wl.shape[0]):
      names += [f'write_loss[{k}]', f'inner_grad_norm[{k}]']
  if 'inner/mem_norm' in sums:
    parts.append(jnp.isfinite(sums['inner/mem_norm']).reshape(1))
    names.append('mem_norm')
  parts += [jnp.isfinite(loss).reshape(1), jnp.isfinite(grad_norm).reshape(1),
            _all_finite(new_state).reshape(1)]
  names += ['loss', 'grad_norm', 'state']
  return jnp.concatenate(parts), names


def _grads_shapes(loss_of, params, batch, rng, n_target, n_samples):
  """The shapes of ((loss, sums), grads) of loss_of's value_and_grad, for the micro-batch loop's
  zero carry. The gradients have their parameters' shapes and dtypes (value_and_grad takes only
  floating-point parameters), so only the loss is traced (its forward, K WRITE steps included),
  not its second-order gradient: tracing that twice, here and in the loop, took about half of
  the micro-batched step's lowering time."""
  loss_shapes = jax.eval_shape(lambda p, b, r: loss_of(p, b, r, n_target, n_samples),
                               params, batch, rng)
  grads = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  return loss_shapes, grads


def make_train_step(exp: Experiment, guard: Optional[bool] = None):
  """guard (default: train.on_nonfinite in ('stop', 'skip')): a non-finite step leaves the state
  unchanged."""
  cfg = exp.config
  if guard is None:
    guard = str(cfg.train.get('on_nonfinite', 'stop')) in ('stop', 'skip')
  names: list[str] = []
  method, optimizer = exp.method, exp.optimizer
  lam = float(cfg.memory.inner_loss_weight)
  ignore = exp.task.ignore_ids
  schedule = learning_rate_schedule(cfg.optim, cfg.train.max_steps)
  batch_size = int(cfg.optim.batch_size)
  micro = int(cfg.optim.micro_batch_size) or batch_size
  n_micro = batch_size // micro

  def loss_of(params, batch, rng, n_target, n_samples):
    return outer_loss(method, params, batch, rng=rng, train=True, n_target=n_target,
                      n_samples=n_samples, inner_loss_weight=lam, ignore_ids=ignore)

  def grads_of(params, batch, rng, n_target, n_samples):
    return jax.value_and_grad(loss_of, has_aux=True)(params, batch, rng, n_target, n_samples)

  def train_step(state, batch, rng):
    params = state['params']
    n_target = jnp.maximum(jnp.sum(batch['target_mask']).astype(jnp.float32), 1.0)
    n_samples = jnp.float32(batch['context'].shape[0])
    rng = jax.random.fold_in(rng, state['step'])
    if n_micro == 1:
      (loss, sums), grads = grads_of(params, batch, rng, n_target, n_samples)
    else:
      mbatches = _split_micro(batch, n_micro, exp.mesh)
      rngs = jax.random.split(rng, n_micro)
      shapes = _grads_shapes(loss_of, params, jax.tree_util.tree_map(lambda x: x[0], mbatches),
                             rngs[0], n_target, n_samples)
      zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

      def body(acc, xs):
        b, r = xs
        out = grads_of(params, b, r, n_target, n_samples)
        return jax.tree_util.tree_map(jnp.add, acc, out), None

      ((loss, sums), grads), _ = jax.lax.scan(body, zeros, (mbatches, rngs))
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = tree_norm(grads)
    metrics = {'loss': loss, 'grad_norm': grad_norm,
               'param_norm': tree_norm(new_params), 'lr': schedule(state['step'])}
    metrics.update(sums)
    new_state = {'step': state['step'] + 1, 'params': new_params, 'opt_state': opt_state}
    flags, step_names = finite_flags(loss, grad_norm, sums,
                                     {'params': new_params, 'opt_state': opt_state})
    names[:] = step_names
    metrics['finite'] = flags
    if guard:
      ok = jnp.all(flags)
      new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new_state, state)
    return new_state, metrics

  train_step.finite_names = names
  return train_step


def make_eval_step(exp: Experiment, K: Optional[int] = None):
  """Teacher-forced evaluation sums of one batch with K WRITE steps (None: the trained K)."""
  method, ignore = exp.method.for_evaluation(K), exp.task.ignore_ids

  def eval_step(params, batch):
    return eval_sums(method, params, batch, ignore_ids=ignore, K=K)

  return eval_step
