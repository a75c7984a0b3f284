"""Scale-out: data parallel and FSDP on fake CPU devices, two processes with
jax.distributed, gradient accumulation."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kv_retrieval
from gradmem_jax.training import build_experiment, init_state, make_train_step
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training import abstract_state
from gradmem_jax.training.experiment import auto_micro_batch
from gradmem_jax.training.steps import tree_norm
from tests.subprocs import track

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARG = 'tiny,max_steps=4,train.checkpoint_every=2,train.eval_every=2'


def _train(workdir, devices=1, arg=ARG, extra=(), env_extra=None):
  env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                                    f' --xla_force_host_platform_device_count={devices}'),
             JAX_PLATFORMS='cpu')
  env.update(env_extra or {})
  cmd = [sys.executable, '-m', 'experiments.kv_retrieval',
         f'--config={ROOT}/configs/kv_retrieval.py:{arg}', f'--workdir={workdir}', *extra]
  return track(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True))


def _finish(proc, timeout=900):
  # The limit only catches a hang (a tiny run takes 20-45 s on 2 loaded cores); a hung run is
  # killed, so that it does not slow every later test down.
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out = proc.communicate()[0] + f'\n[killed after {timeout} s]'
  assert proc.returncode == 0, out[-4000:]
  return out


def _losses(workdir):
  return [json.loads(l)['loss'] for l in open(os.path.join(workdir, 'metrics.jsonl'))
          if 'loss' in json.loads(l)]


def _grad_norms(workdir):
  return [json.loads(l)['grad_norm'] for l in open(os.path.join(workdir, 'metrics.jsonl'))
          if 'loss' in json.loads(l)]


def _params(workdir, arg=ARG):
  exp = build_experiment(kv_retrieval.get_config(arg))
  abstract, _ = abstract_state(exp)
  return load_params(os.path.join(workdir, 'checkpoints'), abstract['params'])[0]


def _assert_close(a, b, **tol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_four_devices_match_one_and_checkpoints_move_between_them(tmp_path):
  one, four, fsdp = tmp_path / 'one', tmp_path / 'four', tmp_path / 'fsdp'
  procs = [_train(one, 1), _train(four, 4), _train(fsdp, 4, extra=['--config.mesh.fsdp=2'])]
  outs = [_finish(p) for p in procs]
  assert 'devices=4' in outs[1] and 'devices=4' in outs[2]
  np.testing.assert_allclose(_losses(four), _losses(one), rtol=1e-5)
  np.testing.assert_allclose(_losses(fsdp), _losses(one), rtol=1e-5)
  # The gradient itself (its global norm, every step from the first, at lr 0, on): AdamW ignores
  # the gradient's scale, so params alone would not show a gradient off by the device count.
  assert len(_grad_norms(one)) == 4
  np.testing.assert_allclose(_grad_norms(four), _grad_norms(one), rtol=1e-5)
  np.testing.assert_allclose(_grad_norms(fsdp), _grad_norms(one), rtol=1e-5)
  p1 = _params(one)
  _assert_close(_params(four), p1, rtol=1e-5, atol=1e-6)
  _assert_close(_params(fsdp), p1, rtol=1e-5, atol=1e-6)
  # Resume the 4-device run on 1 device and the 1-device run on 4 devices (FSDP-sharded).
  longer = ARG.replace('max_steps=4', 'max_steps=6')
  a = _train(four, 1, arg=longer)
  b = _train(one, 4, arg=longer, extra=['--config.mesh.fsdp=2'])
  ref = _train(tmp_path / 'ref', 1, arg=longer)
  out_a, out_b, _ = _finish(a), _finish(b), _finish(ref)
  assert 'steps 4->6' in out_a and 'steps 4->6' in out_b
  p_ref = _params(tmp_path / 'ref', longer)
  _assert_close(_params(four, longer), p_ref, rtol=1e-5, atol=1e-6)
  _assert_close(_params(one, longer), p_ref, rtol=1e-5, atol=1e-6)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(wd):
  port = _free_port()
  procs = [_train(wd, 1, env_extra={'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                                    'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)})
           for i in range(2)]
  outs = []
  for p in procs:  # wait for both before asserting, so a failure shows both processes' output
    try:
      outs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      p.kill()
      outs.append(p.communicate()[0] + '\n[killed after 600 s]')
  return procs, outs


def test_two_processes_with_jax_distributed_agree(tmp_path):
  # _free_port releases the port before the coordinator binds it: another process may take it in
  # between. Only that failure is retried (a fresh port and workdir), at most twice.
  for attempt in range(3):
    wd = tmp_path / f'multi{attempt}'
    procs, outs = _run_two_processes(wd)
    # what the coordinator says when its port is taken (checked with jax 0.10.2)
    taken = 'Failed to start RPC server|Failed to add port to server|address already in use'
    if not any(p.returncode and re.search(taken, out, re.I) for p, out in zip(procs, outs)):
      break
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}\n--- the other:\n{outs[1 - i][-2000:]}'
  sums = []
  for i, out in enumerate(outs):
    m = re.search(rf'process {i}/2: params checksum ([0-9.e+-]+)', out)
    assert m, out[-3000:]
    sums.append(float(m.group(1)))
  assert sums[0] == sums[1]
  assert 'devices=2' in outs[0]
  single = tmp_path / 'single'
  _finish(_train(single, 2))  # the same global batch on one process with 2 devices
  np.testing.assert_allclose(_losses(wd), _losses(single), rtol=1e-5)
  r = json.load(open(single / 'results.json'))
  np.testing.assert_allclose(sums[0], r['params_checksum'], rtol=1e-6)
  # A second two-process run on the workdir while another process holds it: both processes stop
  # (process 0 took the lock and says who holds it; process 1 hears it from process 0), with the
  # busy exit status, instead of process 1 waiting at its first collective.
  from gradmem_jax import workdir_lock
  with workdir_lock.hold(str(wd)):
    procs, outs = _run_two_processes(wd)
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == workdir_lock.BUSY_EXIT, f'process {i}:\n{out[-3000:]}'
  assert f'in use by another training process (pid {os.getpid()} on ' in outs[0]
  assert 'process 0 could not take it (another training process holds it)' in outs[1]


def test_gradient_accumulation_equals_full_batch():
  full = kv_retrieval.get_config('tiny,batch_size=8')
  micro = kv_retrieval.get_config('tiny,batch_size=8,optim.micro_batch_size=2')  # 4 micro-batches
  outs = []
  for config in (full, micro):
    exp = build_experiment(config)
    state = init_state(exp, jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
    step = jax.jit(make_train_step(exp))
    for _ in range(2):
      state, metrics = step(state, batch, jax.random.PRNGKey(1))
    outs.append((state, metrics))
  (s_full, m_full), (s_micro, m_micro) = outs
  np.testing.assert_allclose(m_micro['loss'], m_full['loss'], rtol=1e-5)
  np.testing.assert_allclose(m_micro['grad_norm'], m_full['grad_norm'], rtol=1e-4)
  _assert_close(s_micro['params'], s_full['params'], rtol=1e-5, atol=1e-6)


def test_the_micro_batched_step_differentiates_the_loss_once_while_tracing(monkeypatch):
  # The loop's zero carry takes its shapes from the loss alone (the gradients have the
  # parameters' shapes): differentiating the loss a second time, only for shapes, doubled the
  # lowering time of every micro-batched step (paper model, K=2: 6.5-7.2 s against 2.5-3.8 s
  # for the whole batch).
  exp = build_experiment(kv_retrieval.get_config('tiny,batch_size=8,optim.micro_batch_size=2'))
  state = init_state(exp, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
  from gradmem_jax.training import steps
  calls = []

  class CountingJax:  # jax as steps.py sees it, counting its value_and_grad calls
    def __getattr__(self, name):
      return getattr(jax, name)

    def value_and_grad(self, *a, **k):
      calls.append(1)
      return jax.value_and_grad(*a, **k)

  monkeypatch.setattr(steps, 'jax', CountingJax())
  jax.jit(steps.make_train_step(exp)).lower(state, batch, jax.random.PRNGKey(1))
  assert len(calls) == 1


def test_auto_micro_batch_resolves_per_platform_and_context_length():
  one = jax.devices()[:1]
  exp = build_experiment(kv_retrieval.get_config('tiny,batch_size=32,optim.micro_batch_size=-1'), one)
  assert exp.config.optim.micro_batch_size == 8  # CPU: chunks of 8 samples per device
  exp = build_experiment(kv_retrieval.get_config('tiny,batch_size=8,optim.micro_batch_size=-1'), one)
  assert exp.config.optim.micro_batch_size == 0  # nothing to split
  # Long contexts: chunks of at most CPU_CHUNK_TOKENS WRITE tokens (64 pairs: 457 + m tokens -> 2)
  exp = build_experiment(kv_retrieval.get_config('tiny,n_pairs=64,batch_size=16,'
                                                 'optim.micro_batch_size=-1'), one)
  assert exp.task.context_len + exp.config.memory.num_memory > 1024 // 3
  assert exp.config.optim.micro_batch_size == 2
  assert auto_micro_batch(12, 1, 'cpu', 400) == 2     # the largest divisor within the budget
  assert auto_micro_batch(12, 1, 'cpu', 2000) == 1    # one sample is never split
  assert auto_micro_batch(64, 4, 'cpu', 100) == 32    # 8 per device
  assert auto_micro_batch(64, 1, 'gpu', 100) == 0
  assert auto_micro_batch(12, 1, 'cpu', 100) == 6     # cap 8 does not divide 12: 6 does
  assert auto_micro_batch(20, 2, 'cpu', 300) == 4     # 10 per device, cap 3: 2 per device
  assert kv_retrieval.get_config('paper_n16').optim.micro_batch_size == -1
  with pytest.raises(ValueError, match='optim.micro_batch_size'):
    kv_retrieval.get_config('tiny,optim.micro_batch_size=-2')


def test_bfloat16_compute_keeps_float32_params_and_memory():
  config = kv_retrieval.get_config('tiny')
  config.model.dtype = 'bfloat16'
  exp = build_experiment(config)
  state = init_state(exp, jax.random.PRNGKey(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state['params']))
  batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
  mem, stats = exp.method.write(state['params'], batch['context'], batch['context_mask'])
  assert mem['memory'].dtype == jnp.float32
  state, m = jax.jit(make_train_step(exp))(state, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(m['loss']))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state['params']))


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_policies_do_not_change_the_step(policy):
  """Gradients (via their norm, every step) and params after 4 steps, 2 of them past the 2-step
  warmup (the first step runs at lr 0, so one step would compare the initial params)."""
  outs = []
  for inner, model in (('none', 'none'), (policy, policy)):
    config = kv_retrieval.get_config('tiny,K=2')
    config.memory.inner_remat, config.model.remat = inner, model
    exp = build_experiment(config)
    state = init_state(exp, jax.random.PRNGKey(0))
    it = exp.task.train_batches(8)
    step = jax.jit(make_train_step(exp))
    norms = []
    for _ in range(4):
      batch = {k: jnp.asarray(v) for k, v in next(it)[1].items()}
      state, m = step(state, batch, jax.random.PRNGKey(1))
      norms.append(float(m['grad_norm']))
    outs.append((state['params'], norms))
  (p0, n0), (p1, n1) = outs
  moved = jax.tree_util.tree_map(jnp.subtract, p0, init_state(exp, jax.random.PRNGKey(0))['params'])
  assert float(tree_norm(moved)) > 1e-4, 'the params did not move'
  np.testing.assert_allclose(n1, n0, rtol=1e-5)
  _assert_close(p1, p0, rtol=1e-5, atol=1e-6)
