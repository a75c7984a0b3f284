"""Write-only LoRA and the frozen backbone (memory.lora_rank, memory.freeze_backbone)."""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from configs import kv_retrieval
from gradmem_jax.memory import MemoryConfig, build_method, forward, outer_loss
from gradmem_jax.models import lora
from gradmem_jax.training import build_experiment, init_state, make_train_step
from tests.conftest import random_batch, tiny_backbone, tiny_method


def _with_b(params, seed=3, scale=0.3):
  """params with every LoRA B factor random (B = 0 at init leaves WRITE unchanged)."""
  key = jax.random.PRNGKey(seed)
  def f(path, x):
    if getattr(path[-1], 'key', None) == 'b':
      # zlib.crc32, not hash(): str hashes change from process to process (PYTHONHASHSEED), which
      # made the factors, and so the finite-difference test below, differ from run to run.
      return scale * jax.random.normal(jax.random.fold_in(key, zlib.crc32(str(path).encode())),
                                       x.shape, x.dtype)
    return x
  mem = dict(params['memory'], lora=jax.tree_util.tree_map_with_path(f, params['memory']['lora']))
  return dict(params, memory=mem)


def _pair(**mem):
  """(method without LoRA, method with LoRA rank 3, params with LoRA, params without it)."""
  method, params = tiny_method(K=2, lora_rank=3, **mem)
  base = build_method(method.backbone, MemoryConfig(num_memory=2, K=2, **mem))
  plain = dict(params, memory={k: v for k, v in params['memory'].items() if k != 'lora'})
  return base, method, params, plain


def test_lora_params_layout():
  _, method, params, _ = _pair()
  tree = params['memory']['lora']
  assert set(tree) == {'layers_0', 'layers_1'}
  ab = tree['layers_0']['self_attn']
  assert set(ab) == {'q_proj', 'v_proj'}
  q = params['backbone']['layers_0']['self_attn']['q_proj']['kernel']
  assert ab['q_proj']['a'].shape == (q.shape[0], 3) and ab['q_proj']['b'].shape == (3, q.shape[1])
  assert not np.any(np.asarray(ab['q_proj']['b'])) and np.any(np.asarray(ab['q_proj']['a']))


def test_read_is_the_base_model_and_write_differs_once_b_is_nonzero():
  base, method, params, plain = _pair()
  batch = random_batch()
  # B = 0: WRITE is exactly the base model's.
  s_lora, _ = method.write(params, batch['context'], batch['context_mask'])
  s_base, _ = base.write(plain, batch['context'], batch['context_mask'])
  np.testing.assert_array_equal(s_lora['memory'], s_base['memory'])
  # B != 0: WRITE changes ...
  trained = _with_b(params)
  s_new, _ = method.write(trained, batch['context'], batch['context_mask'])
  assert float(jnp.abs(s_new['memory'] - s_base['memory']).max()) > 1e-4
  # ... READ of the same memory does not (bit-identical to the model without LoRA).
  for state in (s_base, s_new):
    np.testing.assert_array_equal(method.read_logits(trained, state, batch['qa']),
                                  base.read_logits(plain, state, batch['qa']))
  # The merge itself: W + alpha/r A@B on the targets, other leaves untouched.
  merged = method.write_params(trained)['backbone']
  f = trained['memory']['lora']['layers_1']['self_attn']['v_proj']
  w = trained['backbone']['layers_1']['self_attn']['v_proj']['kernel']
  np.testing.assert_allclose(merged['layers_1']['self_attn']['v_proj']['kernel'],
                             w + (16.0 / 3) * f['a'] @ f['b'], rtol=1e-6, atol=1e-6)
  assert merged['layers_1']['self_attn']['k_proj'] is trained['backbone']['layers_1']['self_attn']['k_proj']


def _grads(method, params, batch):
  def f(p):
    return outer_loss(method, p, batch, rng=None, train=True, n_target=jnp.float32(6.0),
                      n_samples=jnp.float32(3.0), inner_loss_weight=0.5)[0]
  return jax.grad(f)(params)


def _norms(tree):
  return {jax.tree_util.keystr(p): float(jnp.abs(x).max())
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('freeze', [False, True])
def test_gradients_reach_the_lora_factors_and_what_is_trained(freeze):
  method, params = tiny_method(K=2, lora_rank=3, freeze_backbone=freeze, num_ctrl=1,
                               mem_proj='proj', learn_inner_lr='scalar')
  params = _with_b(params)
  g = _grads(method, params, random_batch())
  mem = _norms(g['memory'])
  assert all(v > 0 for v in mem.values()), mem  # M0, write head, proj, ctrl, inner lr, A and B
  assert any('lora' in k and "['a']" in k for k in mem) and any("['b']" in k for k in mem)
  bb = _norms(g['backbone'])
  if freeze:
    assert all(v == 0 for v in bb.values()), bb
  else:
    assert all(v > 0 for v in bb.values()), [k for k, v in bb.items() if v == 0]


def test_lora_gradient_comes_from_write_only():
  """A READ-only loss (memory fixed) gives the LoRA factors no gradient."""
  method, params = tiny_method(K=1, lora_rank=2)
  params = _with_b(params)
  batch = random_batch()
  state, _ = method.write(params, batch['context'], batch['context_mask'])
  state = jax.lax.stop_gradient(state)
  g = jax.grad(lambda p: jnp.sum(method.read_logits(p, state, batch['qa']) ** 2))(params)
  assert all(v == 0 for v in _norms(g['memory']['lora']).values())


def test_second_order_finite_differences_through_lora(x64):
  method, params = tiny_method('float64', K=2, lora_rank=2, grad_mode='second', inner_lr=0.2,
                               model=dict(num_layers=1))
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), _with_b(params, scale=0.1))
  batch = random_batch()
  factors = params['memory']['lora']

  @jax.jit  # one compilation for all the finite-difference evaluations
  def loss(fac):
    p = dict(params, memory=dict(params['memory'], lora=fac))
    logits, _, _ = forward(method, p, batch)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  # Central differences of the first- and second-order VJPs (x64). Dropping the second-order term
  # of the inner steps (grad_mode='first') fails this check.
  check_grads(loss, (factors,), order=2, modes=['rev'], eps=1e-4, atol=1e-6, rtol=1e-4)


def _tiny_config(*extra):
  return kv_retrieval.get_config(','.join(['tiny', 'K=1', 'lr=1e-2', 'optim.warmup_steps=0',
                                           'max_steps=10', 'optim.weight_decay=0.1', *extra]))


def test_frozen_backbone_is_bit_identical_after_train_steps():
  config = _tiny_config('memory.freeze_backbone=True', 'memory.lora_rank=2')
  exp = build_experiment(config)
  state = init_state(exp, jax.random.PRNGKey(0))
  before = jax.tree_util.tree_map(np.asarray, state['params'])
  batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
  step = jax.jit(make_train_step(exp))
  for i in range(3):
    state, m = step(state, batch, jax.random.PRNGKey(i))
    assert np.isfinite(float(m['loss']))
  after = jax.tree_util.tree_map(np.asarray, state['params'])
  for (p, x), y in zip(jax.tree_util.tree_flatten_with_path(before['backbone'])[0],
                       jax.tree_util.tree_leaves(after['backbone'])):
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(p)
  for k in ('mem_init', 'write_head', 'lora'):
    changed = [not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(before['memory'][k]),
                                                        jax.tree_util.tree_leaves(after['memory'][k]))]
    assert all(changed), k
  # No optimizer moments are kept for the frozen backbone.
  n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state['opt_state']))
  n_mem = sum(x.size for x in jax.tree_util.tree_leaves(state['params']['memory']))
  assert n_opt < 3 * n_mem + 10


def test_unfrozen_backbone_moves():
  exp = build_experiment(_tiny_config('memory.lora_rank=2'))
  state = init_state(exp, jax.random.PRNGKey(0))
  before = np.asarray(state['params']['backbone']['norm']['scale'])
  batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(8))[1].items()}
  state, _ = jax.jit(make_train_step(exp))(state, batch, jax.random.PRNGKey(0))
  assert not np.array_equal(before, np.asarray(state['params']['backbone']['norm']['scale']))


@pytest.mark.parametrize('change, match', [
    (dict(lora_rank=2, lora_dropout=0.1), 'lora_dropout'),
    (dict(lora_dropout=0.1), 'merged'),
    (dict(lora_rank=-1), 'lora_rank'),
    (dict(lora_rank=2, lora_alpha=0.0), 'lora_alpha'),
    (dict(lora_rank=2, method='rmt'), 'lora_rank'),
])
def test_config_refusals(change, match):
  with pytest.raises(ValueError, match=match):
    MemoryConfig(**change).validate()


def test_unknown_target_is_named():
  bb = tiny_backbone()
  with pytest.raises(ValueError, match=r"memory.lora_targets: 'c_attn'.*allowed: \[.*'q_proj'"):
    lora.init(jax.random.PRNGKey(0), bb.init(jax.random.PRNGKey(0)), 2, ('c_attn',))
  assert MemoryConfig(lora_targets='q_proj, k_proj').lora_targets == ('q_proj', 'k_proj')
