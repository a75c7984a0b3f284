"""RMT and full-context baselines behind the GradMem interface."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kv_retrieval
from gradmem_jax.memory import forward
from gradmem_jax.training import build_experiment, init_state, make_train_step
from tests.conftest import random_batch, tiny_method


@pytest.mark.parametrize('method', ['gradmem', 'rmt', 'full_context'])
def test_loss_decreases_on_a_fixed_batch(method):
  config = kv_retrieval.get_config(f'tiny,method={method},lr=1e-2,optim.warmup_steps=0,'
                                   'max_steps=40,K=1')
  exp = build_experiment(config)
  state = init_state(exp, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
  step = jax.jit(make_train_step(exp))
  losses = []
  for _ in range(30):
    state, m = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  assert losses[-1] < 0.6 * losses[0], losses


def test_rmt_k2_differs_from_k1():
  method, params = tiny_method(method='rmt', K=1)
  batch = random_batch()
  l1, s1, _ = forward(method, params, batch, K=1)
  l2, s2, _ = forward(method, params, batch, K=2)
  assert not np.allclose(s1['memory'], s2['memory'])
  assert not np.allclose(l1, l2)


def test_rmt_residual_update():
  method, params = tiny_method(method='rmt', K=2, rmt_update='residual')
  assert 'rmt_norm' in params['memory']
  state, _ = method.write(params, random_batch()['context'], random_batch()['context_mask'])
  # Layer norm output: each memory vector has ~zero mean and unit variance.
  np.testing.assert_allclose(np.asarray(state['memory']).mean(-1), 0, atol=1e-4)


def test_rmt_memory_sits_after_the_real_context():
  """With right padding, the trailing memory must follow the last real token: the written memory
  of a short sample does not depend on how much padding follows it."""
  method, params = tiny_method(method='rmt', K=1)
  b = random_batch(b=3, s=7)
  s1, _ = method.write(params, b['context'], b['context_mask'])
  pad = jnp.zeros((3, 5), jnp.int32)
  s2, _ = method.write(params, jnp.concatenate([b['context'], pad], 1),
                       jnp.concatenate([b['context_mask'], pad], 1))
  np.testing.assert_allclose(s1['memory'], s2['memory'], atol=1e-5)


@pytest.mark.parametrize('name', ['gradmem', 'rmt'])
def test_memory_methods_read_only_from_memory(name):
  method, params = tiny_method(method=name, K=2, inner_lr=0.5)
  batch = random_batch()
  state, _ = method.write(params, batch['context'], batch['context_mask'])
  logits = method.read_logits(params, state, batch['qa'])
  # The context changes after the memory was written: READ is unchanged...
  changed = dict(batch, context=(batch['context'] + 5) % 19 + 4)
  _ = method.write(params, changed['context'], changed['context_mask'])
  np.testing.assert_array_equal(logits, method.read_logits(params, state, batch['qa']))
  # ...and READ depends on the context only through the memory: a new WRITE changes it.
  state2, _ = method.write(params, changed['context'], changed['context_mask'])
  assert not np.allclose(logits, method.read_logits(params, state2, batch['qa']))


def test_full_context_sees_the_context():
  method, params = tiny_method(method='full_context')
  batch = random_batch()
  l1, _, _ = forward(method, params, batch)
  changed = dict(batch, context=(batch['context'] + 5) % 19 + 4)
  l2, _, _ = forward(method, params, changed)
  assert not np.allclose(l1, l2)


def test_full_context_packing_ignores_padding():
  """The first qa token follows the last real context token whatever the padding."""
  method, params = tiny_method(method='full_context')
  b = random_batch(b=3, s=7)
  l1, _, _ = forward(method, params, b)
  pad = jnp.zeros((3, 4), jnp.int32)
  b2 = dict(b, context=jnp.concatenate([b['context'], pad + 9], 1),
            context_mask=jnp.concatenate([b['context_mask'], pad], 1))
  l2, _, _ = forward(method, params, b2)
  np.testing.assert_allclose(l1, l2, atol=1e-5)


@pytest.mark.parametrize('kind', ['llama', 'mamba'])
def test_full_context_generates_the_backbones_greedy_continuation(kind):
  """Greedy answers read from the whole context: each row's tokens are the argmax of the
  backbone run directly on that row's real context, its prompt and the tokens generated so far
  (no padding, no packing), and a stop id ends a row."""
  from tests.conftest import TINY_MAMBA
  extra = {'model': TINY_MAMBA} if kind == 'mamba' else {}  # the llama default otherwise
  method, params = tiny_method(method='full_context', **extra)
  b = random_batch(b=3, s=7)
  mask = np.asarray(b['context_mask'])
  state, _ = method.write(params, b['context'], b['context_mask'])
  prompt, prompt_len = b['qa'][:, :3], jnp.array([3, 2, 3])
  gen = method.generate(params, state, prompt, prompt_len, max_new_tokens=4)
  bb, backbone = params['backbone'], method.backbone
  for i in range(3):
    # A causal model's greedy continuation is the sequence whose every generated token is the
    # argmax of the logits before it: one forward over the row's real context, its prompt and
    # the generated tokens checks them all.
    seq = (list(np.asarray(b['context'][i])[mask[i] > 0])
           + list(np.asarray(prompt[i, :prompt_len[i]])) + list(np.asarray(gen[i])))
    ids = jnp.asarray(seq, jnp.int32)[None]
    h = backbone.hidden(bb, backbone.embed(bb, ids), jnp.arange(len(seq)))
    pred = np.asarray(jnp.argmax(backbone.logits(bb, h), axis=-1)[0])
    assert list(pred[len(seq) - 5:len(seq) - 1]) == list(np.asarray(gen[i])), (i, gen[i], pred)
  stop = int(gen[0, 1])
  stopped = method.generate(params, state, prompt, prompt_len, max_new_tokens=4, stop_ids=(stop,),
                            pad_id=0)
  first = int(np.argmax(np.asarray(stopped[0]) == stop))
  assert first <= 1 and np.all(np.asarray(stopped[0, first + 1:]) == 0)
