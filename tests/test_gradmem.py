"""GradMem WRITE/READ and meta-gradients against independent references."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gradmem_jax.memory import MemoryConfig, build_method, forward, losses, outer_loss
from tests.conftest import random_batch, tiny_backbone, tiny_method


def _loss_fn(method, batch, inner_loss_weight=0.0, K=None):
  n_t = jnp.sum(batch['target_mask'])
  n_s = batch['context'].shape[0]

  @jax.jit
  def f(params):
    return outer_loss(method, params, batch, rng=None, train=False, n_target=n_t, n_samples=n_s,
                      inner_loss_weight=inner_loss_weight, K=K)[0]
  return f


def _allclose(a, b, atol=1e-5, rtol=1e-5):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------
# Meta-gradient against finite differences (float64, order 2, reverse mode).


@pytest.mark.parametrize('K', [1, 2])
def test_meta_gradient_check_grads_sgd(x64, K):
  method, params = tiny_method('float64', K=K, inner_lr=0.5, mem_proj='proj', num_ctrl=1,
                               learn_inner_lr='per_step')
  batch = random_batch(b=2, s=5, q=4)
  f = _loss_fn(method, batch, inner_loss_weight=0.5)
  check_grads(f, (params,), order=2, modes=['rev'], atol=1e-4, rtol=1e-4, eps=1e-5)


def test_meta_gradient_check_grads_adam(x64):
  # adam_eps well above g^2: with a tiny eps the first Adam step is ~sign(g), whose curvature
  # at small |g| is too sharp for finite differences to resolve (the derivative itself is fine).
  method, params = tiny_method('float64', K=2, inner_lr=0.05, inner_optimizer='adam',
                               adam_eps=1e-2)
  batch = random_batch(b=2, s=5, q=4)
  check_grads(_loss_fn(method, batch), (params,), order=2, modes=['rev'], atol=1e-4, rtol=1e-3,
              eps=1e-5)


def test_meta_gradient_check_grads_per_sample_projection_and_clipping(x64):
  method, params = tiny_method('float64', K=2, inner_lr=0.5, mem_proj='per_sample',
                               clip_norm=0.3)
  batch = random_batch(b=2, s=5, q=4)
  check_grads(_loss_fn(method, batch), (params,), order=2, modes=['rev'], atol=1e-4, rtol=1e-4, eps=1e-5)


# ------------------------------------------------------------------------------------------------
# scan == unrolled Python loop; vmap == per-sample loop; batched == vmap.


def _reference_write(method, params, context, mask, K, lr):
  """Plain Python loop of SGD steps on one sample's WRITE loss (independent of the scan)."""
  m = params['memory']['mem_init'][None]
  emb = method.backbone.embed(params['backbone'], context[None, :-1])
  for _ in range(K):
    g = jax.grad(lambda mm: method.write_loss(params, {'memory': mm}, emb, context[None],
                                              mask[None])[0])(m)
    m = m - lr * g
  return m[0]


@pytest.mark.parametrize('unroll', [True, False])
def test_scan_matches_python_loop(x64, unroll):
  method, params = tiny_method('float64', K=3, inner_lr=0.7, unroll_inner=unroll)
  batch = random_batch(b=3, s=6)
  state, stats = method.write(params, batch['context'], batch['context_mask'])
  for i in range(3):
    ref = _reference_write(method, params, batch['context'][i], batch['context_mask'][i], 3, 0.7)
    np.testing.assert_allclose(state['memory'][i], ref, atol=1e-10)
  assert stats['write_loss'].shape == (3, 3)


def test_meta_gradient_matches_python_loop(x64):
  method, params = tiny_method('float64', K=2, inner_lr=0.7)
  batch = random_batch(b=2, s=6)

  def ref_loss(p):
    mems = jnp.stack([_reference_write(method, p, batch['context'][i], batch['context_mask'][i],
                                       2, 0.7) for i in range(2)])
    logits = method.read_logits(p, {'memory': mems}, batch['qa'])
    s = losses.read_metrics(logits, batch['qa'], batch['target_mask'])
    return s['ce_sum'] / s['n_target']

  g_ref = jax.grad(ref_loss)(params)
  g = jax.grad(_loss_fn(method, batch))(params)
  _allclose(g, g_ref, atol=1e-10)


def test_vmapped_batch_matches_per_sample_loop():
  method, params = tiny_method(K=2, inner_lr=0.5, inner_impl='vmap')
  batch = random_batch(b=3, s=6)
  state, stats = method.write(params, batch['context'], batch['context_mask'])
  for i in range(3):
    mem_i, stats_i = method.write_memory(params, batch['context'][i], batch['context_mask'][i])
    np.testing.assert_allclose(state['memory'][i], mem_i, atol=1e-6)
    np.testing.assert_allclose(stats['write_loss'][i], stats_i['write_loss'], atol=1e-6)


@pytest.mark.parametrize('extra', [{}, {'inner_optimizer': 'adam', 'clip_norm': 0.5},
                                   {'mem_proj': 'per_sample', 'clip_value': 0.01}])
def test_batched_inner_loss_matches_vmap(extra):
  method_b, params = tiny_method(K=2, inner_lr=0.5, inner_impl='batched', **extra)
  method_v = dataclasses.replace(method_b, cfg=dataclasses.replace(method_b.cfg, inner_impl='vmap'))
  batch = random_batch(b=3, s=6)
  sb, tb = method_b.write(params, batch['context'], batch['context_mask'])
  sv, tv = method_v.write(params, batch['context'], batch['context_mask'])
  _allclose(sb, sv, atol=1e-6)
  _allclose(tb, tv, atol=1e-5)
  gb = jax.grad(_loss_fn(method_b, batch))(params)
  gv = jax.grad(_loss_fn(method_v, batch))(params)
  _allclose(gb, gv, atol=1e-5)


def test_memory_independent_of_other_samples_and_padding():
  method, params = tiny_method(K=2, inner_lr=0.5)
  batch = random_batch(b=3, s=6)
  state, _ = method.write(params, batch['context'], batch['context_mask'])
  # Change the other samples.
  ctx2 = batch['context'].at[1:].set((batch['context'][1:] + 3) % 19 + 4)
  state2, _ = method.write(params, ctx2, batch['context_mask'])
  np.testing.assert_allclose(state['memory'][0], state2['memory'][0], atol=1e-6)
  # Change sample 1's padding (content and amount of right padding).
  ctx3 = batch['context'].at[1, 4:].set(11)
  state3, _ = method.write(params, ctx3, batch['context_mask'])
  np.testing.assert_allclose(state['memory'][1], state3['memory'][1], atol=1e-6)
  pad = jnp.zeros((3, 4), jnp.int32)
  state4, _ = method.write(params, jnp.concatenate([batch['context'], pad + 7], axis=1),
                           jnp.concatenate([batch['context_mask'], pad], axis=1))
  np.testing.assert_allclose(state['memory'], state4['memory'], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradient modes.


def _grad_norms(method, params, batch, **kw):
  g = jax.grad(_loss_fn(method, batch, **kw))(params)
  mem = g['memory']
  return (float(jnp.linalg.norm(mem['mem_init'])), float(jnp.linalg.norm(mem['write_head'])), g)


def test_grad_modes():
  batch = random_batch(b=3, s=6)
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='none')
  m0, wh, _ = _grad_norms(method, params, batch)
  assert m0 == 0.0 and wh == 0.0
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='first')
  m0, wh, g_first = _grad_norms(method, params, batch)
  assert m0 > 0.0 and wh == 0.0
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='second')
  m0, wh, g_second = _grad_norms(method, params, batch)
  assert m0 > 0.0 and wh > 0.0
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='second', last_k_second_order=0)
  _, _, g_last0 = _grad_norms(method, params, batch)
  _allclose(g_last0, g_first, atol=1e-7)
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='second', last_k_second_order=2)
  _, _, g_last2 = _grad_norms(method, params, batch)
  _allclose(g_last2, g_second, atol=1e-7)
  # last_k = 1 is neither.
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='second', last_k_second_order=1)
  _, _, g_last1 = _grad_norms(method, params, batch)
  diff = lambda a, b: float(jnp.abs(a['memory']['write_head'] - b['memory']['write_head']).max())
  assert diff(g_last1, g_second) > 1e-7 and diff(g_last1, g_first) > 1e-7


def test_first_order_inner_loss_term_trains_write_head():
  batch = random_batch(b=3, s=6)
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='first')
  _, wh, _ = _grad_norms(method, params, batch, inner_loss_weight=0.5)
  assert wh > 0.0


def test_zero_inner_lr_reads_from_initial_memory():
  batch = random_batch(b=3, s=6)
  method, params = tiny_method(K=3, inner_lr=0.0)
  logits, state, _ = forward(method, params, batch)
  logits0, state0, stats0 = forward(method, params, batch, K=0)
  np.testing.assert_allclose(logits, logits0, atol=1e-6)
  np.testing.assert_allclose(state0['memory'], jnp.broadcast_to(
      params['memory']['mem_init'], state0['memory'].shape))
  assert stats0['write_loss'].shape == (3, 0)


def test_write_reduces_write_loss_and_stats():
  method, params = tiny_method(K=4, inner_lr=2.0)
  batch = random_batch(b=3, s=6)
  state, stats = method.write(params, batch['context'], batch['context_mask'])
  wl = np.asarray(stats['write_loss'])
  assert np.all(wl[:, -1] < wl[:, 0])
  np.testing.assert_allclose(
      stats['delta_norm'],
      jnp.linalg.norm((state['memory'] - params['memory']['mem_init']).reshape(3, -1), axis=1),
      rtol=1e-5)
  assert stats['grad_norm'].shape == (3, 4) and np.all(np.asarray(stats['grad_norm']) > 0)


def test_clip_norm_bounds_the_step():
  method, params = tiny_method(K=1, inner_lr=1.0, clip_norm=1e-3)
  batch = random_batch(b=3, s=6)
  _, stats = method.write(params, batch['context'], batch['context_mask'])
  assert np.all(np.asarray(stats['delta_norm']) <= 1e-3 * (1 + 1e-5))
  method, params = tiny_method(K=1, inner_lr=1.0, clip_value=1e-4)
  _, stats = method.write(params, batch['context'], batch['context_mask'])
  bound = 1e-4 * np.sqrt(params['memory']['mem_init'].size)
  assert np.all(np.asarray(stats['delta_norm']) <= bound * (1 + 1e-5))


def test_learned_inner_lr_gets_gradient_and_is_positive():
  method, params = tiny_method(K=2, inner_lr=0.3, learn_inner_lr='per_step')
  batch = random_batch(b=3, s=6)
  np.testing.assert_allclose(method.inner_lrs(params, 2), [0.3, 0.3], rtol=1e-6)
  np.testing.assert_allclose(method.inner_lrs(params, 4), [0.3] * 4, rtol=1e-6)  # K_eval > K
  g = jax.grad(_loss_fn(method, batch))(params)
  assert g['memory']['inner_lr'].shape == (2,)
  assert np.all(np.abs(np.asarray(g['memory']['inner_lr'])) > 0)


def test_dropout_draws_fresh_mask_per_inner_step():
  method, params = tiny_method(K=2, inner_lr=0.5, model=dict(
      kind='gpt2', embd_dropout=0.5, attn_dropout=0.0, resid_dropout=0.0))
  batch = random_batch(b=2, s=6)
  key = jax.random.PRNGKey(3)
  s1, t1 = method.write(params, batch['context'], batch['context_mask'], rng=key,
                        deterministic=False)
  s2, _ = method.write(params, batch['context'], batch['context_mask'], rng=key,
                       deterministic=False)
  _allclose(s1, s2, atol=0)  # same key, same result
  s3, _ = method.write(params, batch['context'], batch['context_mask'],
                       rng=jax.random.PRNGKey(4), deterministic=False)
  assert not np.allclose(s1['memory'], s3['memory'])
  # Step 0's and step 1's losses use different masks: the deterministic run differs from both.
  _, t_det = method.write(params, batch['context'], batch['context_mask'])
  assert not np.allclose(t1['write_loss'], t_det['write_loss'])


# ------------------------------------------------------------------------------------------------
# READ, metrics, generation.


def test_read_metrics_exact_match_and_ignored_ids():
  labels = jnp.array([[5, 6, 7, 8], [5, 6, 7, 8]])
  target = jnp.array([[0, 1, 1, 1], [0, 1, 1, 1]])
  logits = jax.nn.one_hot(jnp.array([[0, 6, 7, 9], [0, 6, 9, 8]]), 12) * 10
  s = losses.read_metrics(logits, labels, target, ignore_ids=(8,))
  # Sample 0: scored tokens 6, 7 right (8 ignored) -> exact; sample 1: 7 wrong.
  assert float(s['em_sum']) == 1.0 and float(s['n_samples']) == 2.0
  assert float(s['correct']) == 3.0 and float(s['n_scored']) == 4.0
  s2 = losses.read_metrics(logits, labels, target)
  assert float(s2['em_sum']) == 0.0 and float(s2['n_scored']) == 6.0


def test_generate_matches_teacher_forced_argmax():
  method, params = tiny_method(K=2, inner_lr=0.5, num_ctrl=1)
  batch = random_batch(b=3, s=6)
  state, _ = method.write(params, batch['context'], batch['context_mask'])
  prompt = batch['qa'][:, :3]
  prompt_len = jnp.array([3, 2, 3])
  gen = method.generate(params, state, prompt, prompt_len, max_new_tokens=4)
  assert gen.shape == (3, 4)
  for i in range(3):
    n = int(prompt_len[i])
    seq = jnp.concatenate([prompt[i, :n], gen[i]])[None]
    st = jax.tree_util.tree_map(lambda x: x[i:i + 1], state)
    pred = jnp.argmax(method.read_logits(params, st, seq), axis=-1)[0]
    np.testing.assert_array_equal(pred[n:n + 4], gen[i])  # pred[j] predicts seq[j]


def test_generate_stops_at_stop_id():
  method, params = tiny_method(K=1)
  batch = random_batch(b=2, s=6)
  state, _ = method.write(params, batch['context'], batch['context_mask'])
  free = method.generate(params, state, batch['qa'][:, :2], jnp.array([2, 2]), max_new_tokens=5)
  stop = int(free[0, 1])
  gen = method.generate(params, state, batch['qa'][:, :2], jnp.array([2, 2]), max_new_tokens=5,
                        stop_ids=(stop,), pad_id=0)
  first = int(np.argmax(np.asarray(gen[0]) == stop))
  assert np.all(np.asarray(gen[0, first + 1:]) == 0)


# ------------------------------------------------------------------------------------------------
# Configuration errors.


@pytest.mark.parametrize('field,value,match', [
    ('num_memory', 0, 'memory.num_memory'),
    ('K', -1, 'memory.K'),
    ('grad_mode', 'third', 'memory.grad_mode'),
    ('mem_proj', 'mlp', 'memory.mem_proj'),
    ('inner_optimizer', 'lion', 'memory.inner_optimizer'),
    ('inner_remat', 'some', 'memory.inner_remat'),
])
def test_bad_memory_config_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    build_method(tiny_backbone(), MemoryConfig(**{field: value}))


def test_bad_model_config_errors():
  from gradmem_jax.models import backbone_from_config
  with pytest.raises(ValueError, match='model.num_kv_heads'):
    backbone_from_config(dict(kind='llama', num_heads=4, num_kv_heads=3))
  with pytest.raises(ValueError, match='model.kind'):
    backbone_from_config(dict(kind='mamba'))
  with pytest.raises(ValueError, match='model.hidden_sise'):
    backbone_from_config(dict(kind='llama', hidden_sise=3))
