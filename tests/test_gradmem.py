"""GradMem WRITE/READ and meta-gradients against independent references."""
from __future__ import annotations

import dataclasses
import functools

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
# Meta-gradient against finite differences (float64, reverse mode). Order 1: the full meta-gradient
# of the outer loss (it differentiates through every inner step, so it holds the second-order
# WRITE term). Order 2 (the outer loss's own Hessian, never used by training) cost ~4 minutes of
# the suite; the directional tests below check the same configurations with a negative control.


@pytest.mark.parametrize('K', [1, 2])
def test_meta_gradient_check_grads_sgd(x64, K):
  method, params = tiny_method('float64', K=K, inner_lr=0.5, mem_proj='proj', num_ctrl=1,
                               learn_inner_lr='per_step')
  batch = random_batch(b=2, s=5, q=4)
  f = _loss_fn(method, batch, inner_loss_weight=0.5)
  check_grads(f, (params,), order=1, modes=['rev'], atol=1e-4, rtol=1e-4, eps=1e-5)


def test_meta_gradient_check_grads_adam(x64):
  # adam_eps well above g^2: with a tiny eps the first Adam step is ~sign(g), whose curvature
  # at small |g| is too sharp for finite differences to resolve (the derivative itself is fine).
  method, params = tiny_method('float64', K=2, inner_lr=0.05, inner_optimizer='adam',
                               adam_eps=1e-2)
  batch = random_batch(b=2, s=5, q=4)
  check_grads(_loss_fn(method, batch), (params,), order=1, modes=['rev'], atol=1e-4, rtol=1e-3,
              eps=1e-5)


def test_meta_gradient_check_grads_per_sample_projection_and_clipping(x64):
  method, params = tiny_method('float64', K=2, inner_lr=0.5, mem_proj='per_sample',
                               clip_norm=0.3)
  batch = random_batch(b=2, s=5, q=4)
  check_grads(_loss_fn(method, batch), (params,), order=1, modes=['rev'], atol=1e-4, rtol=1e-4, eps=1e-5)


# Directional finite differences in float64, several random directions, with a negative control.
#
# For a unit direction v, the central difference (f(p + h v) - f(p - h v)) / 2h approximates the
# directional derivative <grad f, v> with a truncation error h^2 |f'''| / 6 and a round-off error
# of about eps64 |f| / h (eps64 = 2.2e-16, |f| ~ 3 for a cross-entropy over 23 tokens). Measured on
# these models in float64: ~4e-8 at h = 1e-3 (so ~4e-12 of truncation at h = 1e-5), and at most
# 5e-10 at h = 1e-5 (SGD) or h = 1e-6 (Adam at eps 1e-8), where round-off dominates. FD_TOL = 1e-8
# is 20x the worst measured error and ~1e-6 of the derivatives (|<g, v>| ~ 2e-2 .. 8e-2). A
# first-order WRITE (same forward values, second-order path cut) is off by 3e-3 .. 2e-2 in every
# direction measured, 1e5 x FD_TOL: the check cannot pass with the second-order path cut.
FD_TOL = 1e-8
N_DIRECTIONS = 6


def _unit_directions(params, n, seed=0):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    v = [rng.standard_normal(x.shape) for x in leaves]
    norm = np.sqrt(sum(float(np.sum(a * a)) for a in v))
    out.append(jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a / norm, x.dtype)
                                                      for a, x in zip(v, leaves)]))
  return out


def _fd_errors(value_and_grad, params, h, n=N_DIRECTIONS, grads=None):
  """|central difference of the loss along v - <grads, v>| for n random unit directions v
  (grads: the gradient returned by `value_and_grad` at params, unless given)."""
  if grads is None:
    grads = value_and_grad(params)[1]
  grads = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
  leaves, treedef = jax.tree_util.tree_flatten(jax.tree_util.tree_map(np.asarray, params))
  errors = []
  for v in _unit_directions(params, n):
    v = [np.asarray(d) for d in jax.tree_util.tree_leaves(v)]
    at = lambda t: jax.tree_util.tree_unflatten(treedef, [x + t * d for x, d in zip(leaves, v)])
    fd = (float(value_and_grad(at(h))[0]) - float(value_and_grad(at(-h))[0])) / (2 * h)
    analytic = sum(float(np.vdot(g, d)) for g, d in zip(grads, v))
    errors.append(abs(fd - analytic))
  return np.array(errors)


def _with(method, **cfg):
  return dataclasses.replace(method, cfg=dataclasses.replace(method.cfg, **cfg))


NO_DROPOUT_GPT2 = dict(kind='gpt2', embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
# name: (memory config, model overrides, FD step h, inner_loss_weight)
FD_CASES = {
    'sgd_proj_ctrl_learned_lr': (dict(K=2, inner_lr=0.5, mem_proj='proj', num_ctrl=1,
                                      learn_inner_lr='per_step'), {}, 1e-5, 0.5),
    'adam_default_eps': (dict(K=2, inner_lr=0.05, inner_optimizer='adam'), {}, 1e-6, 0.0),
    'per_sample_proj_clip_norm': (dict(K=2, inner_lr=0.5, mem_proj='per_sample', clip_norm=0.3),
                                  {}, 1e-5, 0.0),
    'gpt2_backbone': (dict(K=2, inner_lr=0.5, num_ctrl=1), NO_DROPOUT_GPT2, 1e-5, 0.5),
    # causal attention in query blocks of 4 rows (WRITE runs 2 + 4 = 6 positions: blocks of 4
    # and 2; READ 2 + 3 = 5: 4 and 1), the second-order term through the blocked softmax included
    'blocked_attention': (dict(K=2, inner_lr=0.5), dict(attn_q_block=4), 1e-5, 0.5),
    # the recurrent state space backbone: the second-order term through its selective scan (the
    # default, sequential one; the associative scan gives the same second derivatives,
    # test_mamba.py)
    'mamba_backbone': (dict(K=2, inner_lr=0.5, num_ctrl=1), dict(kind='mamba'), 1e-5, 0.5),
}


@pytest.mark.parametrize('case', sorted(FD_CASES))
def test_meta_gradient_finite_differences_in_several_directions(x64, case):
  mem, model, h, inner_w = FD_CASES[case]
  method, params = tiny_method('float64', model=model, **mem)
  if case == 'adam_default_eps':
    assert method.cfg.adam_eps == 1e-8  # the default, not an eps that smooths Adam
  batch = random_batch(b=2, s=5, q=4)
  second = jax.jit(jax.value_and_grad(_loss_fn(method, batch, inner_loss_weight=inner_w)))
  errors = _fd_errors(second, params, h)
  assert errors.max() < FD_TOL, errors
  # Negative control: the first-order WRITE computes the same loss, but its gradient misses the
  # second-order terms: against the same finite differences it must fail, clearly, in every
  # direction.
  first = jax.jit(jax.value_and_grad(_loss_fn(_with(method, grad_mode='first'), batch,
                                              inner_loss_weight=inner_w)))
  loss_first, g_first = first(params)
  np.testing.assert_allclose(float(loss_first), float(second(params)[0]), rtol=1e-14)
  errors_first = _fd_errors(second, params, h, grads=g_first)
  assert errors_first.min() > 1e3 * FD_TOL, errors_first


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


def _reference_loss(method, params, batch, lr, modes, inner_loss_weight=0.0):
  """The READ loss after a WRITE written out step by step in Python: SGD on the sum of the
  per-sample WRITE losses, with stop_gradient where each step's mode says ('first': the step's
  gradient is a constant; 'none': the whole memory is a constant from that step on); plus
  inner_loss_weight x the mean WRITE loss at the last step's memory, with its full gradient."""
  sg = jax.lax.stop_gradient
  ctx, mask = batch['context'], batch['context_mask']
  emb = method.backbone.embed(params['backbone'], ctx[:, :-1])
  mem = jnp.broadcast_to(params['memory']['mem_init'],
                         (ctx.shape[0],) + params['memory']['mem_init'].shape)
  if modes and all(m == 'none' for m in modes):
    mem = sg(mem)
  last_loss = 0.0
  for mode in modes:
    inner = lambda mm: jnp.sum(method.write_loss(params, {'memory': mm}, emb, ctx, mask))
    last_loss = inner(mem) / ctx.shape[0]
    g = jax.grad(inner)(mem)
    if mode != 'second':
      g = sg(g)
    mem = mem - lr * g
    if mode == 'none':
      mem = sg(mem)
  logits = method.read_logits(params, {'memory': mem}, batch['qa'])
  s = losses.read_metrics(logits, batch['qa'], batch['target_mask'])
  return s['ce_sum'] / s['n_target'] + inner_loss_weight * last_loss


def test_grad_modes(x64):
  # Each mode against an independent reference: the WRITE unrolled in Python with stop_gradient
  # where the mode says (not the scan, the grouping of steps by mode, or config.step_modes).
  # float64, inner_lr 0.5 (exact in float32, the dtype of the step sizes): agreement to 1e-10.
  # One layer: the modes are about the inner loop, and each variant is a compilation.
  batch = random_batch(b=3, s=6)
  base, params = tiny_method('float64', model=dict(num_layers=1), K=2, inner_lr=0.5)
  ref = {}
  for modes in (('second', 'second'), ('first', 'first'), ('none', 'none'), ('first', 'second')):
    ref[modes] = jax.jit(jax.grad(lambda p: _reference_loss(base, p, batch, 0.5, modes)))(params)
  same = lambda g, modes: _allclose(g, ref[modes], atol=1e-12, rtol=1e-10)
  m0, wh, g_none = _grad_norms(_with(base, grad_mode='none'), params, batch)
  assert m0 == 0.0 and wh == 0.0
  same(g_none, ('none', 'none'))
  m0, wh, g_first = _grad_norms(_with(base, grad_mode='first'), params, batch)
  assert m0 > 0.0 and wh == 0.0
  same(g_first, ('first', 'first'))
  m0, wh, g_second = _grad_norms(_with(base, grad_mode='second'), params, batch)
  assert m0 > 0.0 and wh > 0.0
  same(g_second, ('second', 'second'))
  _, _, g_last0 = _grad_norms(_with(base, last_k_second_order=0), params, batch)
  same(g_last0, ('first', 'first'))
  _, _, g_last2 = _grad_norms(_with(base, last_k_second_order=2), params, batch)
  same(g_last2, ('second', 'second'))
  # last_k = 1: the first step first order, the last second order; neither of the two above.
  _, _, g_last1 = _grad_norms(_with(base, last_k_second_order=1), params, batch)
  same(g_last1, ('first', 'second'))
  diff = lambda a, b: float(jnp.abs(a['memory']['write_head'] - b['memory']['write_head']).max())
  assert diff(g_last1, g_second) > 1e-7 and diff(g_last1, g_first) > 1e-7
  # The references differ from each other (so each comparison above tells the modes apart).
  leaves = {k: jax.tree_util.tree_leaves(v) for k, v in ref.items()}
  for a in ref:
    for b in ref:
      if a != b:
        assert max(float(jnp.abs(x - y).max()) for x, y in zip(leaves[a], leaves[b])) > 1e-6


def test_grad_modes_with_the_write_loss_term(x64):
  # The objective's WRITE-loss term (memory.inner_loss_weight) keeps its full gradient in every
  # mode: first-order steps before the last run on stopped inputs, the last one on live inputs
  # (GradMem.inner_step). Against the reference above, float64, K=2 (an earlier step each).
  batch = random_batch(b=3, s=6)
  base, params = tiny_method('float64', model=dict(num_layers=1), K=2, inner_lr=0.5)
  for modes, kw in [(('first',) * 2, dict(grad_mode='first')),
                    (('none',) * 2, dict(grad_mode='none')),
                    (('first', 'second'), dict(last_k_second_order=1))]:
    ref = jax.jit(jax.grad(lambda p: _reference_loss(base, p, batch, 0.5, modes, 0.5)))(params)
    if modes == ('first', 'first'):  # the term changes the gradient
      no_term = jax.jit(jax.grad(lambda p: _reference_loss(base, p, batch, 0.5, modes)))(params)
      wh = lambda g: g['memory']['write_head']
      assert float(jnp.abs(wh(ref) - wh(no_term)).max()) > 1e-6
    _, _, g = _grad_norms(_with(base, **kw), params, batch, inner_loss_weight=0.5)
    _allclose(g, ref, atol=1e-12, rtol=1e-10)


def _flops(f, *args):
  from gradmem_jax.training.evaluators import xla_cost
  return float(xla_cost(jax.jit(f).lower(*args).compile())['flops'])


def test_an_earlier_first_order_step_costs_what_an_evaluation_step_costs():
  # A first-order step before the last one is a forward and an inner backward, nothing of the
  # outer gradient: its cost (XLA's FLOP count, K=3 minus K=2) equals an evaluation step's.
  # (Computed from live inputs and cut afterwards, it cost 1.9x as much: 384 against 237 GFLOP
  # for the K=5 first-order KV training step.)
  batch = random_batch(b=4, s=24)
  method, params = tiny_method(K=2, inner_lr=0.5, grad_mode='first')
  # XLA counts a rolled loop's body once: the comparison needs the steps unrolled (the default).
  assert method.cfg.unroll_inner and method.cfg.inner_remat == 'none'
  n_t, n_s = jnp.sum(batch['target_mask']), batch['context'].shape[0]

  def train(K):
    loss = lambda p: outer_loss(method, p, batch, rng=None, train=True, n_target=n_t,
                                n_samples=n_s, inner_loss_weight=0.5, K=K)[0]
    return _flops(jax.grad(loss), params)

  def evaluate(K):
    return _flops(lambda p: forward(method, p, batch, K=K)[0], params)

  extra_train, extra_eval = train(3) - train(2), evaluate(3) - evaluate(2)
  assert extra_eval > 0
  assert abs(extra_train / extra_eval - 1) < 0.05, (extra_train, extra_eval)


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


def _inner_grad_at_init(method, params, batch):
  """The WRITE gradient at M0 [B, m, d], computed directly from the per-sample WRITE loss."""
  ctx, mask = batch['context'], batch['context_mask']
  emb = method.backbone.embed(params['backbone'], ctx[:, :-1])
  m0 = jnp.broadcast_to(params['memory']['mem_init'],
                        (ctx.shape[0],) + params['memory']['mem_init'].shape)
  return m0, jax.grad(lambda m: jnp.sum(method.write_loss(params, {'memory': m}, emb, ctx,
                                                          mask)))(m0)


def test_clipped_steps_are_exactly_the_clipped_gradient(x64):
  # One SGD step: M1 - M0 = -lr * clip(g). Checked value by value against g computed directly, so
  # a clip that zeroes, rescales wrongly or ignores the step fails (not only an upper bound).
  lr = 0.5
  method, params = tiny_method('float64', K=1, inner_lr=lr)
  batch = random_batch(b=3, s=6)
  m0, g = jax.jit(lambda p: _inner_grad_at_init(method, p, batch))(params)
  g = np.asarray(g)
  norms = np.sqrt((g ** 2).reshape(3, -1).sum(1))
  def step(**clip):
    write = jax.jit(lambda p, c, m: _with(method, **clip).write(p, c, m)[0]['memory'])
    return np.asarray(write(params, batch['context'], batch['context_mask']) - m0)
  # Unclipped: the plain gradient step.
  np.testing.assert_allclose(step(), -lr * g, rtol=1e-10, atol=1e-14)
  # clip_norm below every sample's norm: each step has norm exactly lr * clip_norm, along -g.
  c = 0.5 * norms.min()
  delta = step(clip_norm=c)
  np.testing.assert_allclose(delta, -lr * g * (c / norms)[:, None, None], rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(np.sqrt((delta ** 2).reshape(3, -1).sum(1)), lr * c, rtol=1e-10)
  # clip_norm between the samples' norms: only the samples above it are rescaled.
  c = float(np.median(norms))
  scale = np.minimum(1.0, c / norms)
  assert (scale < 1).any() and (scale == 1).any()
  np.testing.assert_allclose(step(clip_norm=c), -lr * g * scale[:, None, None], rtol=1e-10,
                             atol=1e-14)
  # clip_value at the median |g|: clipped entries are exactly +-lr * clip_value, the others as is.
  v = float(np.median(np.abs(g)))
  delta = step(clip_value=v)
  np.testing.assert_allclose(delta, -lr * np.clip(g, -v, v), rtol=1e-10, atol=1e-14)
  clipped = np.abs(g) > v
  assert 0 < clipped.sum() < g.size
  np.testing.assert_allclose(np.abs(delta[clipped]), lr * v, rtol=1e-10)


@pytest.mark.parametrize('kind,scan', [('embd_dropout', False), ('attn_dropout', False),
                                       ('resid_dropout', False),
                                       # inside the blocks, so inside model.scan_layers' scan
                                       ('attn_dropout', True), ('resid_dropout', True)])
def test_dropout_mask_is_fresh_at_each_inner_step(kind, scan):
  # With inner_lr = 0 every step sees the same memory, so the WRITE losses of step 0 and step 1
  # differ only through dropout: equal with one reused mask, different with a fresh mask per step.
  rates = dict(embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
  rates[kind] = 0.5
  method, params = tiny_method(K=2, inner_lr=0.0, model=dict(kind='gpt2', scan_layers=scan,
                                                             **rates))
  batch = random_batch(b=3, s=6)
  write = jax.jit(lambda p, b, rng, det: method.write(p, b['context'], b['context_mask'], rng=rng,
                                                      deterministic=det)[1]['write_loss'],
                  static_argnums=3)
  det = np.asarray(write(params, batch, jax.random.PRNGKey(0), True))
  np.testing.assert_allclose(det[:, 0], det[:, 1], rtol=1e-6)  # the memory does not move
  for seed in range(3):
    wl = np.asarray(write(params, batch, jax.random.PRNGKey(seed), False))
    # Differences of 1e-5 are 40 float32 ulps of a loss of ~3; those measured are 1e-4 .. 1e-2.
    assert np.all(np.abs(wl[:, 0] - wl[:, 1]) > 1e-5), (seed, wl)  # a fresh mask per step
    assert np.all(np.abs(wl - det) > 1e-5), (seed, wl, det)  # dropout is on at each step


def test_bfloat16_compute_matches_float32():
  # bf16 compute (float32 parameters, memory and losses) against float32 compute: same parameters
  # and batches. bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per operation).
  # Measured over 3 batches (relative norm of the difference): logits 0.41%, memory update 0.61%,
  # WRITE losses 0.005%, outer loss at most 0.004%, meta-gradient at most 0.63%. The bounds below
  # are 5x the largest measured (12x for the outer loss). A loss or softmax left in bf16 (0.2% of
  # the loss), or an update lost to bf16 rounding, is far outside them.
  from gradmem_jax.models import backbone_from_config
  from tests.conftest import TINY_LLAMA
  m32, params = tiny_method('float32', K=2, inner_lr=0.5)
  m16 = build_method(backbone_from_config(dict(TINY_LLAMA, dtype='bfloat16',
                                               param_dtype='float32')), m32.cfg)
  rel = lambda a, b: float(jnp.linalg.norm(jnp.asarray(a, jnp.float32) - b) / jnp.linalg.norm(b))
  flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)])
  run = {m: jax.jit(lambda p, b, m=m: forward(m, p, b)) for m in (m16, m32)}

  def loss(method, p, b):
    return outer_loss(method, p, b, rng=None, train=False, n_target=jnp.sum(b['target_mask']),
                      n_samples=b['context'].shape[0])[0]
  meta = {m: jax.jit(jax.value_and_grad(functools.partial(loss, m))) for m in (m16, m32)}
  for seed in range(3):
    batch = random_batch(b=3, s=6, seed=seed)
    (lg16, s16, st16), (lg32, s32, st32) = run[m16](params, batch), run[m32](params, batch)
    assert s16['memory'].dtype == jnp.float32
    assert rel(lg16, lg32) < 0.02
    m0 = params['memory']['mem_init']
    assert rel(s16['memory'] - m0, s32['memory'] - m0) < 0.03
    assert rel(st16['write_loss'], st32['write_loss']) < 3e-4
    (l16, g16), (l32, g32) = meta[m16](params, batch), meta[m32](params, batch)
    assert abs(float(l16) - float(l32)) < 5e-4 * abs(float(l32))
    assert rel(flat(g16), flat(g32)) < 0.03


# ------------------------------------------------------------------------------------------------
# READ, metrics, generation.


def test_read_uses_the_projection_adapted_in_write():
  # memory.mem_proj='per_sample': WRITE adapts each sample's projection along with its memory and
  # READ must use the adapted one, P_b(M_b) = M_b W_b + c_b, not the initial (shared) one.
  method, params = tiny_method(K=2, inner_lr=0.5, mem_proj='per_sample')
  batch = random_batch(b=3, s=6)
  state, _ = jax.jit(lambda p, b: method.write(p, b['context'], b['context_mask']))(params, batch)
  init = params['memory']['mem_proj']
  w, c = state['proj']['kernel'], state['proj']['bias']
  assert w.shape == (3,) + init['kernel'].shape and c.shape == (3,) + init['bias'].shape
  assert float(jnp.abs(w - init['kernel']).max()) > 1e-3  # WRITE did adapt it
  assert float(jnp.abs(w[0] - w[1]).max()) > 1e-4  # per sample
  read = jax.jit(lambda m, p, st, qa: m.read_logits(p, st, qa), static_argnums=0)
  logits = read(method, params, state, batch['qa'])
  # Reference: project by hand with the adapted projection and READ with no projection at all.
  projected = jnp.einsum('bmd,bde->bme', state['memory'], w) + c[:, None, :]
  plain = _with(method, mem_proj='none')
  ref = read(plain, params, {'memory': projected}, batch['qa'])
  np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=1e-5)
  # With the initial projection put back, READ changes: the adapted one is what it reads through.
  initial = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (3,) + x.shape), init)
  logits0 = read(method, params, dict(state, proj=initial), batch['qa'])
  assert float(jnp.abs(logits - logits0).max()) > 1e-3
  # The outer loss sees it too (forward = WRITE then READ).
  fwd_logits, _, _ = forward(method, params, batch)
  np.testing.assert_allclose(fwd_logits, logits, atol=1e-5, rtol=1e-5)


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
    backbone_from_config(dict(kind='rwkv'))
  with pytest.raises(ValueError, match='model.hidden_sise'):
    backbone_from_config(dict(kind='llama', hidden_sise=3))


# ------------------------------------------------------------------------------------------------
# Blocked causal attention (model.attn_q_block) against the dense one.


def test_blocked_attention_equals_dense_in_value_gradient_and_hessian_vector_product(x64):
  from gradmem_jax.models import common
  ks = jax.random.split(jax.random.PRNGKey(3), 4)
  q = jax.random.normal(ks[0], (2, 11, 4, 6), jnp.float64)
  k = jax.random.normal(ks[1], (2, 11, 2, 6), jnp.float64)  # grouped-query: 2 KV heads
  v = jax.random.normal(ks[2], (2, 11, 2, 6), jnp.float64)
  w = jax.random.normal(ks[3], (2, 11, 4, 6), jnp.float64)
  f = lambda qb: (lambda q, k, v: jnp.sum(jnp.tanh(common.causal_attention(q, k, v, q_block=qb))
                                          * w))
  hvp = lambda g, x, t: jax.jvp(jax.grad(g, argnums=(0, 1, 2)), x, t)[1]
  tangents = tuple(jax.random.normal(jax.random.PRNGKey(i), x.shape, jnp.float64)
                   for i, x in enumerate((q, k, v)))
  # Value, gradient and HVP in one jitted call per block size (op by op, this took a minute).
  three = jax.jit(lambda g: (g(q, k, v), jax.grad(g, argnums=(0, 1, 2))(q, k, v),
                             hvp(g, (q, k, v), tangents)), static_argnums=0)
  dense = three(f(0))
  for qb in (1, 3, 4, 10):  # 11 rows: uneven last blocks, and one block of one row
    blocked = three(f(qb))
    np.testing.assert_allclose(blocked[0], dense[0], rtol=1e-12)
    _allclose(blocked[1], dense[1], atol=1e-12, rtol=1e-10)
    _allclose(blocked[2], dense[2], atol=1e-11, rtol=1e-9)


def test_blocked_attention_gives_the_dense_meta_gradient(x64):
  batch = random_batch(b=2, s=9, q=4)
  out = []
  for qb in (0, 4):
    method, params = tiny_method('float64', model=dict(attn_q_block=qb), K=2, inner_lr=0.5)
    out.append(jax.value_and_grad(_loss_fn(method, batch, inner_loss_weight=0.5))(params))
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
  _allclose(out[0][1], out[1][1], atol=1e-12, rtol=1e-9)


def _dots(fn, *args):
  return str(jax.make_jaxpr(fn)(*args)).count('dot_general')


def test_blocked_attention_really_runs_in_blocks():
  """The equivalence tests above would pass if blocking were skipped: count the products."""
  from gradmem_jax.models import common
  q = jnp.ones((1, 11, 2, 4))
  for qb, blocks in ((0, 1), (4, 3), (11, 1), (1, 11)):
    assert _dots(lambda q: common.causal_attention(q, q, q, q_block=qb), q) == 2 * blocks
  # the Llama backbone passes model.attn_q_block down: 2 layers x 2 more products with 2 blocks
  dense, _ = tiny_method('float32', model=dict(attn_q_block=0), K=1)
  blocked, params = tiny_method('float32', model=dict(attn_q_block=4), K=1)
  x = jnp.ones((1, 7, params['backbone']['embed_tokens']['embedding'].shape[1]))
  run = lambda m: (lambda p: m.backbone.hidden(p['backbone'], x, jnp.arange(7)))
  assert _dots(run(blocked), params) > _dots(run(dense), params)
  with pytest.raises(ValueError, match='attn_q_block'):
    common.causal_attention(q, q, q, q_block=4, dropout_rate=0.1,
                            dropout_rng=jax.random.PRNGKey(0), deterministic=False)


def test_attn_q_block_is_checked_and_resolved_per_backend():
  from gradmem_jax.models import llama
  with pytest.raises(ValueError, match='model.attn_q_block'):
    llama.LlamaConfig(attn_q_block=-2).validate()
  assert llama.attn_q_block(llama.LlamaConfig(attn_q_block=0)) == 0
  assert llama.attn_q_block(llama.LlamaConfig(attn_q_block=64)) == 64
  assert llama.attn_q_block(llama.LlamaConfig()) == (
      llama.CPU_ATTN_Q_BLOCK if jax.default_backend() == 'cpu' else 0)
  # a runtime field: may be set over a pretrained Llama-family checkpoint, not over GPT-2's
  from gradmem_jax.models import gguf, pretrained
  assert 'attn_q_block' in pretrained.runtime_fields('llama')
  assert 'attn_q_block' not in pretrained.runtime_fields('gpt2')
  gguf._check_runtime({'attn_q_block': 0, 'dtype': 'bfloat16'})
  with pytest.raises(ValueError, match='num_layers'):
    gguf._check_runtime({'num_layers': 3})


# ------------------------------------------------------------------------------------------------
# Scanned layers (model.scan_layers) against the Python loop over blocks.


# remat inside the scan is checked by test_scanned_layers_really_scan (its values are JAX's own)
@pytest.mark.parametrize('model,extra', [({}, {}),
                                         # the SmolLM2 presets' kind: frozen backbone + LoRA
                                         ({}, dict(lora_rank=2, freeze_backbone=True)),
                                         (NO_DROPOUT_GPT2, {})],
                         ids=['llama', 'llama_lora_frozen_backbone', 'gpt2'])
def test_scanned_layers_give_the_loop_meta_gradient(x64, model, extra):
  batch = random_batch(b=2, s=9, q=4)
  out = []
  for scan in (False, True):
    method, params = tiny_method('float64', model=dict(model, scan_layers=scan), K=2,
                                 inner_lr=0.5, mem_proj='proj', **extra)
    out.append(jax.jit(jax.value_and_grad(_loss_fn(method, batch, inner_loss_weight=0.5)))(params))
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
  _allclose(out[0][1], out[1][1], atol=1e-12, rtol=1e-9)


def test_scanned_blocks_draw_one_dropout_key_per_layer():
  from flax import linen as nn
  from gradmem_jax.models import common

  class AddMask(nn.Module):  # h + a dropout mask of ones (each entry 0 or 2)
    cfg: object = None

    @nn.compact
    def __call__(self, h):
      nn.Dense(1, name='unused')(h[:1])
      return h + nn.Dropout(0.5)(jnp.ones_like(h), deterministic=False)

  class Cfg:
    remat = 'none'

  class Three(nn.Module):
    @nn.compact
    def __call__(self, h):
      layers = [AddMask(name=f'l_{i}') for i in range(3)]
      if self.is_initializing():
        for layer in layers:
          h = layer(h)
        return h
      return common.scan_blocks(Cfg, layers, AddMask(parent=None), h,
                                dropout_rng=self.make_rng('dropout'))

  h = jnp.zeros((4000,))
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  variables = Three().init(rngs, h)
  out = np.asarray(Three().apply(variables, h, rngs={'dropout': jax.random.PRNGKey(2)}))
  # One key for all layers would give 3 equal masks: sums 0 or 6 only.
  counts = {v: int(np.sum(out == v)) for v in (0, 2, 4, 6)}
  assert sum(counts.values()) == out.size and min(counts.values()) > 200, counts


def test_scanned_layers_pass_finite_differences(x64):
  method, params = tiny_method('float64', model=dict(scan_layers=True), K=2, inner_lr=0.5)
  batch = random_batch(b=2, s=5, q=4)
  second = jax.jit(jax.value_and_grad(_loss_fn(method, batch, inner_loss_weight=0.5)))
  errors = _fd_errors(second, params, 1e-5)
  assert errors.max() < FD_TOL, errors


@pytest.mark.parametrize('kind', ['llama', 'gpt2'])
def test_scanned_layers_really_scan(kind):
  """The equivalence above would pass if the flag were ignored: the scanned backbone holds one
  block's products inside a scan instead of one copy per layer."""
  loop, params = tiny_method('float32', model=dict(kind=kind, scan_layers=False), K=1)
  scan, _ = tiny_method('float32', model=dict(kind=kind, scan_layers=True), K=1)
  x = jnp.ones((1, 7, loop.backbone.cfg.hidden_size))
  run = lambda m: (lambda p: m.backbone.hidden(p['backbone'], x, jnp.arange(7)))
  jaxpr_loop, jaxpr_scan = (str(jax.make_jaxpr(run(m))(params)) for m in (loop, scan))
  assert 'scan[' not in jaxpr_loop and 'scan[' in jaxpr_scan
  layers = loop.backbone.cfg.num_layers
  assert layers >= 2 and _dots(run(loop), params) == layers * _dots(run(scan), params)
  # with a remat policy the scanned block is rematerialised too
  remat, _ = tiny_method('float32', model=dict(kind=kind, scan_layers=True, remat='full'), K=1)
  assert 'remat' not in jaxpr_scan and 'remat' in str(jax.make_jaxpr(run(remat))(params))
