"""`train_and_evaluate(config, workdir)`: the resumable outer loop shared by every method.

Resume first, then initialise: a workdir with checkpoints continues where it stopped (params,
optimizer state, step, data-iterator index; the step rng is derived from (seed, step)).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import threading
import time
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from gradmem_jax import config_lib
from gradmem_jax.data import build_task
from gradmem_jax.memory import MemoryConfig, build_method, forward, losses, memory_config_from
from gradmem_jax.memory import outer_loss
from gradmem_jax.models import Backbone, backbone_from_config
from gradmem_jax.training import mesh as mesh_lib
from gradmem_jax.training.checkpoint import Checkpointer, load_params
from gradmem_jax.training.logging_utils import MetricsWriter, Progress, format_duration
from gradmem_jax.training.optim import learning_rate_schedule, make_optimizer

Array = jax.Array
_tree_norm = optax.tree.norm if hasattr(optax, 'tree') and hasattr(optax.tree, 'norm') else (
    optax.global_norm)


# ------------------------------------------------------------------------------------------------
# Building an experiment from a config.


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  task: Any  # gradmem_jax.data task (KVTask, SquadTask)
  backbone: Backbone
  mem_cfg: MemoryConfig
  method: Any
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation

  @property
  def memory_floats(self) -> int:
    """Floats of state carried from WRITE to READ per sample."""
    if self.mem_cfg.method == 'full_context':  # the KV cache of the context
      return 2 * self.backbone.cfg.num_layers * self.task.context_len * self.backbone.hidden_size
    return self.mem_cfg.num_memory * self.backbone.hidden_size


def _resolve_tokenizer(config):
  """data.tokenizer='model' means the tokenizer stored with model.hf_checkpoint."""
  data = config.data.to_dict()
  if data.get('tokenizer') == 'model':
    if not config.model.get('hf_checkpoint'):
      raise ValueError("data.tokenizer='model' needs model.hf_checkpoint (a local Hugging Face "
                       'checkpoint directory with its tokenizer files)')
    data['tokenizer'] = config.model.hf_checkpoint
  return data


# Fields of config.model that still apply when the architecture comes from a checkpoint.
HF_RUNTIME_FIELDS = ('dtype', 'param_dtype', 'remat')


def _model_from_hf(model: dict) -> dict:
  """config.model for `model.hf_checkpoint`: the architecture from the checkpoint's config.json,
  the compute settings from ours."""
  from gradmem_jax.models import hf
  path = os.path.join(model['hf_checkpoint'], 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'model.hf_checkpoint={model["hf_checkpoint"]!r}: no config.json there '
                            '(a Hugging Face checkpoint directory with *.safetensors is expected)')
  with open(path) as f:
    out = hf.model_config_from_hf(json.load(f))
  out.update({k: model[k] for k in HF_RUNTIME_FIELDS if k in model})
  out['hf_checkpoint'] = model['hf_checkpoint']
  return out


def pretrained_params(exp: Experiment, rng: Array) -> Optional[dict]:
  """Params with the backbone from `model.hf_checkpoint` (memory parameters, e.g. the write head,
  initialised from it), or None when the config names no checkpoint."""
  directory = exp.config.model.get('hf_checkpoint', '')
  if not directory:
    return None
  from gradmem_jax.models import hf
  backbone_params = hf.load_hf_params(directory, exp.backbone)
  return exp.method.init_params(rng, backbone_params=backbone_params)


def build_experiment(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  config_lib.validate_config(config)
  task = build_task(_resolve_tokenizer(config))
  model = config.model.to_dict()
  if model.get('hf_checkpoint'):
    model = _model_from_hf(model)
  if not model['vocab_size']:
    model['vocab_size'] = task.vocab_size
  elif model['vocab_size'] < task.vocab_size:
    raise ValueError(f'model.vocab_size={model["vocab_size"]} is smaller than the task vocabulary '
                     f'({task.vocab_size})')
  backbone = backbone_from_config(model)
  mem_cfg = memory_config_from(config.memory)
  method = build_method(backbone, mem_cfg)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  n_dev = mesh.size
  o = config.optim
  if o.batch_size % n_dev:
    raise ValueError(f'optim.batch_size={o.batch_size} must be divisible by the {n_dev} devices')
  if o.micro_batch_size == -1:  # auto: chunks of 8 per device on CPU, the whole batch elsewhere
    config = _with_micro_batch(config, _auto_micro_batch(o.batch_size, n_dev, mesh))
    o = config.optim
  if o.micro_batch_size and o.micro_batch_size % n_dev:
    raise ValueError(f'optim.micro_batch_size={o.micro_batch_size} must be divisible by the '
                     f'{n_dev} devices')
  if config.eval.batch_size % n_dev:
    raise ValueError(f'eval.batch_size={config.eval.batch_size} must be divisible by the {n_dev} '
                     'devices')
  optimizer = make_optimizer(config.optim, config.train.max_steps)
  return Experiment(config, task, backbone, mem_cfg, method, mesh, optimizer)


def _auto_micro_batch(batch_size: int, n_dev: int, mesh) -> int:
  """On CPU a second-order step over a whole batch overflows the caches; chunks of 8 samples per
  device were fastest on 2 cores (WORKSPACE.md, perf log). Accelerators take the whole batch."""
  if mesh.devices.flat[0].platform != 'cpu':
    return 0
  micro = 8 * n_dev
  return micro if batch_size > micro and batch_size % micro == 0 else 0


def _with_micro_batch(config, micro: int):
  config = ml_collections.ConfigDict(config.to_dict())
  config.optim.micro_batch_size = micro
  return config


def init_state(exp: Experiment, rng: Array) -> dict:
  params = exp.method.init_params(rng)
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'opt_state': exp.optimizer.init(params)}


def abstract_state(exp: Experiment) -> tuple[Any, Any]:
  """(ShapeDtypeStructs with shardings, shardings) of the train state."""
  shapes = jax.eval_shape(functools.partial(init_state, exp), jax.random.PRNGKey(0))
  shardings = mesh_lib.state_shardings(exp.mesh, shapes)
  abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return abstract, shardings


# ------------------------------------------------------------------------------------------------
# Steps.


def _split_micro(batch: dict, n_micro: int, mesh) -> dict:
  """[B, ...] -> [n_micro, B / n_micro, ...]; micro-batch i takes samples i, i + n_micro, ... so
  every micro-batch is spread over all data-parallel devices."""
  def split(x):
    mb = x.shape[0] // n_micro
    y = x.reshape((mb, n_micro) + x.shape[1:]).swapaxes(0, 1)
    spec = P(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(split, batch)


def make_train_step(exp: Experiment):
  cfg = exp.config
  method, optimizer = exp.method, exp.optimizer
  lam = float(cfg.memory.inner_loss_weight)
  ignore = exp.task.ignore_ids
  schedule = learning_rate_schedule(cfg.optim, cfg.train.max_steps)
  batch_size = int(cfg.optim.batch_size)
  micro = int(cfg.optim.micro_batch_size) or batch_size
  n_micro = batch_size // micro

  def grads_of(params, batch, rng, n_target, n_samples):
    def f(p):
      return outer_loss(method, p, batch, rng=rng, train=True, n_target=n_target,
                        n_samples=n_samples, inner_loss_weight=lam, ignore_ids=ignore)
    return jax.value_and_grad(f, has_aux=True)(params)

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
      shapes = jax.eval_shape(grads_of, params, jax.tree_util.tree_map(lambda x: x[0], mbatches),
                              rngs[0], n_target, n_samples)
      zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

      def body(acc, xs):
        b, r = xs
        out = grads_of(params, b, r, n_target, n_samples)
        return jax.tree_util.tree_map(jnp.add, acc, out), None

      ((loss, sums), grads), _ = jax.lax.scan(body, zeros, (mbatches, rngs))
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {'loss': loss, 'grad_norm': _tree_norm(grads),
               'param_norm': _tree_norm(new_params), 'lr': schedule(state['step'])}
    metrics.update(sums)
    new_state = {'step': state['step'] + 1, 'params': new_params, 'opt_state': opt_state}
    return new_state, metrics

  return train_step


def make_eval_step(exp: Experiment, K: Optional[int] = None):
  method, ignore = exp.method, exp.task.ignore_ids

  def eval_step(params, batch):
    logits, state, stats = forward(method, params, batch, K=K)
    sums = losses.read_metrics(logits, batch['qa'], batch['target_mask'], ignore)
    w = jnp.any(batch['target_mask'] > 0, axis=1).astype(jnp.float32)
    if hasattr(method, 'final_write_loss'):
      stats = dict(stats, final_write_loss=method.final_write_loss(
          params, state, batch['context'], batch['context_mask']))
    for k, v in stats.items():
      sums[f'inner/{k}'] = jnp.sum(v * w.reshape((-1,) + (1,) * (v.ndim - 1)), axis=0)
    sums['n_weight'] = jnp.sum(w)
    return sums

  return eval_step


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
      ca = jax.jit(f).lower(*args).compile().cost_analysis()
      ca = ca[0] if isinstance(ca, (list, tuple)) else ca
      return float(ca.get('flops', 0.0))  # no 'flops' entry: nothing computed
    except Exception:  # noqa: BLE001 - informational only
      return float('nan')

  state = jax.eval_shape(write, params, batch)
  state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), state)
  return {'write_flops_per_sample': count(write, params, batch),
          'read_flops_per_sample': count(read, params, state, batch)}


def summarize_sums(sums: dict) -> dict:
  """Rates from summed metrics: em, token_acc, target_loss, inner-loop means per sample."""
  out = losses.summarize(sums)
  n = float(sums.get('n_weight', 0)) or 1.0
  for k, v in sums.items():
    if k.startswith('inner/'):
      arr = np.asarray(v, np.float64) / n
      out[k] = arr.tolist() if arr.ndim else float(arr)
  return out


class Evaluator:
  """Jitted evaluation over the fixed validation set, for any K."""

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
      exp = self.exp
      cfg_k = exp.mem_cfg.K if K is None else K
      method = exp.method
      if cfg_k > 8 and exp.mem_cfg.method == 'gradmem' and exp.mem_cfg.unroll_inner:
        # Evaluation keeps no graph: a rolled scan compiles fast for large K.
        method = dataclasses.replace(method, cfg=dataclasses.replace(exp.mem_cfg,
                                                                     unroll_inner=False))
      sub = dataclasses.replace(exp, method=method)
      self._steps[K] = jax.jit(make_eval_step(sub, K))
    total = None
    for b in self.batches():
      s = self._steps[K](params, b)
      total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    return summarize_sums(mesh_lib.to_host(total))


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
# The loop.


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the outer parameters, evaluates, checkpoints; returns the results dict."""
  if '://' in str(workdir):
    raise ValueError(f'workdir={workdir!r}: object-store URLs are not supported (the metrics log is '
                     'appended to); use a local or shared filesystem path, e.g. a GCS FUSE mount')
  mesh_lib.maybe_initialize_distributed(config)
  exp = build_experiment(config)
  cfg = exp.config
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    _write_config(workdir, cfg)
  max_steps = int(cfg.train.max_steps)
  ckpt = Checkpointer(workdir, cfg.train.keep_checkpoints)
  abstract, shardings = abstract_state(exp)
  restored = ckpt.restore_latest(abstract)
  t_start = time.perf_counter()
  if restored is not None:
    state, meta = restored
    logging.info('resumed from %s at step %d', workdir, int(state['step']))
  else:
    meta = {'data_index': 0, 'best_token_acc': -1.0, 'best_step': -1, 'last_em': None,
            'elapsed_s': 0.0}
    init = jax.jit(functools.partial(init_state, exp), out_shardings=shardings)
    state = init(jax.random.PRNGKey(cfg.seed))
    pretrained = None if cfg.train.init_from else pretrained_params(
        exp, jax.random.PRNGKey(cfg.seed))
    if pretrained is not None:
      pretrained = jax.tree_util.tree_map(
          lambda x, a: np.asarray(x, a.dtype), pretrained, abstract['params'])
      state = dict(state, params=jax.device_put(pretrained, shardings['params']))
      if is_main:
        print(f'initialised the backbone from {cfg.model.hf_checkpoint}', flush=True)
    if cfg.train.init_from:
      params, src = load_params(cfg.train.init_from, abstract['params'])
      state = dict(state, params=jax.device_put(params, shardings['params']))
      if is_main:
        print(f'initialised params from {cfg.train.init_from} (step {src.get("step")})', flush=True)
  start_step = int(state['step'])
  elapsed_before = float(meta.get('elapsed_s', 0.0))
  writer = MetricsWriter(workdir, enabled=is_main,
                         resume_step=start_step if restored is not None else None)
  evaluator = Evaluator(exp)
  eval_K = None if cfg.eval.K < 0 else int(cfg.eval.K)
  b_shard = mesh_lib.batch_sharding(exp.mesh)
  batch_shardings = {k: b_shard for k in ('context', 'context_mask', 'qa', 'target_mask')}
  train_step = jax.jit(make_train_step(exp),
                       in_shardings=(shardings, batch_shardings, mesh_lib.replicated(exp.mesh)),
                       out_shardings=(shardings, None), donate_argnums=(0,))
  data = Prefetcher(exp.task.train_batches(cfg.optim.batch_size, int(meta['data_index']),
                                           jax.process_index(), jax.process_count()))
  base_rng = jax.random.PRNGKey(cfg.seed + 1)
  progress = Progress(max_steps, cfg.train.log_every_s, start_step, enabled=is_main)
  if is_main:
    print(f'workdir {workdir}: {exp.mem_cfg.method} K={exp.mem_cfg.K} on {exp.task.summary};'
          f' devices={exp.mesh.size} steps {start_step}->{max_steps}', flush=True)
  step = start_step
  last_loss = None  # until the first logged step
  stop_reason = 'max_steps'
  log_every = max(1, min(50, int(cfg.train.eval_every)))
  try:
    if step >= max_steps:
      stop_reason = 'already finished'
    while step < max_steps:
      index, local = next(data)
      batch = mesh_lib.global_batch(local, exp.mesh)
      state, metrics = train_step(state, batch, base_rng)
      step += 1
      meta['data_index'] = index
      if step % log_every == 0 or step == max_steps or progress.every_s == 0:
        m = _host(metrics)
        last_loss = float(m['loss'])
        if not np.isfinite(last_loss):
          raise FloatingPointError(f'training loss became {last_loss} at step {step}')
        row = {'loss': last_loss, 'grad_norm': float(m['grad_norm']), 'lr': float(m['lr']),
               'param_norm': float(m['param_norm'])}
        row.update({f'train/{k}': v for k, v in summarize_sums(m).items()})
        writer.write(step, row)
      progress.maybe_report(step, last_loss, meta['last_em'])
      stop_now = False
      if step % cfg.train.eval_every == 0 or step == max_steps:
        ev = evaluator(state['params'], eval_K)
        meta['last_em'] = ev.get('em')
        writer.write(step, {f'val/{k}': v for k, v in ev.items()})
        if is_main:
          wl = ev.get('inner/write_loss')
          print(f'  eval step {step}: EM {100 * ev.get("em", 0):.2f}%  token acc '
                f'{100 * ev.get("token_acc", 0):.2f}%  target loss {ev.get("target_loss", 0):.4f}'
                + (f'  write loss {wl[0]:.3f}->{wl[-1]:.3f}' if wl else ''), flush=True)
        if ev.get('token_acc', 0.0) > meta['best_token_acc']:
          meta['best_token_acc'] = ev['token_acc']
          meta['best_step'] = step
          meta['best'] = ev
          ckpt.save_best(step, state['params'], {'step': step, **_jsonable(ev)})
        if cfg.train.target_em and ev.get('em', 0.0) >= cfg.train.target_em - 1e-9:
          stop_reason = f'target EM {cfg.train.target_em} reached'
          stop_now = True
      minutes = (elapsed_before + time.perf_counter() - t_start) / 60
      if cfg.train.max_minutes and minutes >= cfg.train.max_minutes:
        stop_reason = f'time limit {cfg.train.max_minutes} min'
        stop_now = True
      if step % cfg.train.checkpoint_every == 0 or step == max_steps or stop_now:
        meta['elapsed_s'] = elapsed_before + time.perf_counter() - t_start
        ckpt.save(step, state, _jsonable(meta))
      if stop_now:
        break
    if ckpt.latest_step() != step:  # the final state is always resumable/loadable
      meta['elapsed_s'] = elapsed_before + time.perf_counter() - t_start
      ckpt.save(step, state, _jsonable(meta))
  finally:
    data.close()
    ckpt.wait()
    writer.flush()
  session_s = time.perf_counter() - t_start
  wall = elapsed_before + session_s
  # `best` is the best validation result seen (its params are in best/, as the authors keep the
  # best by token accuracy); `final` evaluates the last parameters.
  final_eval = evaluator(state['params'], eval_K)
  best_eval = meta.get('best') or final_eval
  results = {
      'task': cfg.data.get('task', 'kv'), 'method': exp.mem_cfg.method,
      'n_pairs': getattr(exp.task.cfg, 'n_pairs', None), 'K': exp.mem_cfg.K,
      'grad_mode': exp.mem_cfg.grad_mode, 'num_memory': exp.mem_cfg.num_memory,
      'inner_lr': exp.mem_cfg.inner_lr, 'inner_optimizer': exp.mem_cfg.inner_optimizer,
      'memory_floats': exp.memory_floats, 'steps': step, 'stop_reason': stop_reason,
      'wall_time_s': wall, 'steps_per_s': (step - start_step) / max(session_s, 1e-9),
      'best_step': meta.get('best_step'),
      'best': _jsonable(best_eval), 'final': _jsonable(final_eval),
      'seed': int(cfg.seed), 'devices': exp.mesh.size,
  }
  checksum = params_checksum(state['params'])
  results['params_checksum'] = checksum
  print(f'process {jax.process_index()}/{jax.process_count()}: params checksum {checksum!r}',
        flush=True)
  if jax.process_count() == 1:
    results.update(flops_per_sample(exp, state['params']))
  if is_main:
    with open(os.path.join(workdir, 'results.json.tmp'), 'w') as f:
      json.dump(results, f, indent=2)
    os.replace(os.path.join(workdir, 'results.json.tmp'), os.path.join(workdir, 'results.json'))
    writer.write(step, {f'final/{k}': v for k, v in final_eval.items()})
    print(results_table(results), flush=True)
  writer.close()
  ckpt.close()
  return results


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
  b, f = r['best'], r['final']
  rows = [
      ('method', r['method']),
      ('n_pairs', r['n_pairs']) if r['n_pairs'] is not None else ('task', r['task']),
      ('K', r['K']),
      ('grad_mode', r['grad_mode']), ('steps', r['steps']),
      ('wall time', format_duration(r['wall_time_s'])), ('stopped', r['stop_reason']),
      ('best step', r['best_step']),
      ('best val EM', f'{100 * b.get("em", 0):.2f}%'),
      ('best val token acc', f'{100 * b.get("token_acc", 0):.2f}%'),
      ('final val EM', f'{100 * f.get("em", 0):.2f}%'),
      ('final val token acc', f'{100 * f.get("token_acc", 0):.2f}%'),
      ('final target loss', f'{f.get("target_loss", float("nan")):.4f}'),
  ]
  width = max(len(k) for k, _ in rows)
  lines = ['| ' + 'result'.ljust(width) + ' | value |', '|' + '-' * (width + 2) + '|-------|']
  lines += [f'| {k.ljust(width)} | {v} |' for k, v in rows]
  return '\n'.join(lines)
