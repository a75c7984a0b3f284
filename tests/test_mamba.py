"""The Mamba backbone (models/mamba.py) against transformers' PyTorch MambaForCausalLM on the same
weights, its two scans against each other, the family through the presets and the runner.
(Its second-order meta-gradient is checked by finite differences in test_gradmem.py.)"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmem_jax.models import backbone_from_config, mamba
from gradmem_jax.models.hf import load_hf_checkpoint, model_config_from_hf
from tests.conftest import TINY_MAMBA, tiny_method

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Max |logit difference| measured on CPU, logits up to ~5: 1.4e-6 (the first configuration below)
# and 4.8e-7 (the second), the same for both scans. A transposed, swapped or mis-signed tensor, or
# a scan that runs the wrong way, gives 1e-2 and more.
TOL = 1e-5


def _hf_mamba(path, seed=0, **kw):
  """A tiny random MambaForCausalLM saved as safetensors; parameters drawn larger than the default
  init (and A, dt around theirs) so that every tensor moves the logits."""
  torch.manual_seed(seed)
  cfg = dict(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
             conv_kernel=4, layer_norm_epsilon=1e-5)
  cfg.update(kw)
  model = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg)).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('A_log') or name.endswith('dt_proj.bias'):
        p.add_(0.3 * noise)
      elif 'norm' in name:
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.15 * noise)
  model.save_pretrained(path, safe_serialization=True)
  return model


def _ours(bb, params, ids):
  t = ids.shape[1]
  hidden = bb.hidden(params, bb.embed(params, jnp.asarray(ids)), jnp.arange(t))
  return np.asarray(bb.logits(params, hidden))


@pytest.mark.parametrize('impl', mamba.SCAN_IMPLS)
@pytest.mark.parametrize('hf_cfg', [{}, dict(use_bias=True, use_conv_bias=False,
                                             time_step_rank=3, conv_kernel=3, expand=3,
                                             layer_norm_epsilon=0.05)])
def test_logits_match_transformers(tmp_path, impl, hf_cfg):
  model = _hf_mamba(tmp_path, **hf_cfg)
  ids = np.random.default_rng(1).integers(0, 64, (2, 13))
  with torch.no_grad():
    theirs = model(torch.as_tensor(ids)).logits.numpy()
  bb, params = load_hf_checkpoint(tmp_path, scan_impl=impl)
  assert bb.kind == 'mamba' and bb.cfg.scan_impl == impl
  ours = _ours(bb, params, ids)
  assert np.abs(theirs).max() > 1.0  # the comparison is not between near-zero logits
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


@pytest.mark.parametrize('residual_in_fp32', [True, False])
def test_bfloat16_compute_stays_near_transformers_float32(tmp_path, residual_in_fp32):
  """bf16 compute (the recurrence and, by default, the residual stream kept in float32): within
  bf16 rounding of the float32 reference. Measured: 0.014-0.023 at logits up to ~5, where
  transformers' own bf16 model is 0.018-0.025 from its float32 one; a dropped or transposed
  tensor is off by 1 and more."""
  model = _hf_mamba(tmp_path, residual_in_fp32=residual_in_fp32)
  ids = np.random.default_rng(3).integers(0, 64, (2, 13))
  with torch.no_grad():
    theirs = model(torch.as_tensor(ids)).logits.numpy()
  bb, params = load_hf_checkpoint(tmp_path, dtype='bfloat16')
  assert bb.cfg.residual_in_fp32 == residual_in_fp32
  np.testing.assert_allclose(_ours(bb, params, ids), theirs, atol=0.15, rtol=0)


def test_a_token_sees_only_earlier_tokens(tmp_path):
  _hf_mamba(tmp_path)
  bb, params = load_hf_checkpoint(tmp_path)
  ids = np.random.default_rng(2).integers(0, 64, (1, 10))
  changed = ids.copy()
  changed[0, 6] = (ids[0, 6] + 1) % 64
  a, b = _ours(bb, params, ids), _ours(bb, params, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_scans_agree_in_value_gradient_and_second_derivative(x64):
  """The associative (log-depth) scan and the sequential lax.scan: the same recurrence, to second
  order (what GradMem's meta-gradient needs)."""
  rng = np.random.default_rng(0)
  decay = jnp.asarray(rng.uniform(0.2, 1.0, (2, 9, 3, 4)))
  inp = jnp.asarray(rng.standard_normal((2, 9, 3, 4)))
  w = jnp.asarray(rng.standard_normal((2, 9, 3, 4)))
  f = lambda impl: (lambda a, b: jnp.sum(jnp.sin(mamba.selective_scan(a, b, impl) * w)))
  loop = np.zeros((2, 3, 4))
  for t in range(9):  # the recurrence written out
    loop = np.asarray(decay[:, t]) * loop + np.asarray(inp[:, t])
    for impl in mamba.SCAN_IMPLS:
      np.testing.assert_allclose(mamba.selective_scan(decay, inp, impl)[:, t], loop, rtol=1e-12)
  v = jnp.asarray(rng.standard_normal(decay.shape))
  for fn in (lambda g: g, jax.grad,
             lambda g: (lambda a, b: jax.jvp(lambda x: jax.grad(g)(x, b), (a,), (v,))[1])):
    seq, asc = fn(f('sequential')), fn(f('associative'))
    np.testing.assert_allclose(seq(decay, inp), asc(decay, inp), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('field,value,match', [
    ('hidden_act', 'gelu', r'config\.hidden_act'),
    ('tie_word_embeddings', False, r'config\.tie_word_embeddings'),
    ('intermediate_size', 50, r'config\.intermediate_size=50'),
])
def test_unsupported_checkpoint_configs_are_refused(field, value, match):
  c = dict(model_type='mamba', vocab_size=10, hidden_size=8, num_hidden_layers=1, expand=2,
           intermediate_size=16)
  c[field] = value
  with pytest.raises(ValueError, match=match):
    model_config_from_hf(c)


def test_checkpoint_config_converts(tmp_path):
  _hf_mamba(tmp_path, time_step_rank=5)
  with open(os.path.join(tmp_path, 'config.json')) as f:
    got = model_config_from_hf(json.load(f))
  assert got['kind'] == 'mamba' and got['time_step_rank'] == 5 and got['state_size'] == 8
  assert backbone_from_config(got).cfg.dt_rank == 5
  assert backbone_from_config(dict(got, time_step_rank=0)).cfg.dt_rank == 2  # ceil(32 / 16)


@pytest.mark.parametrize('field,value,match', [
    ('scan_impl', 'parallel', r'model\.scan_impl'),
    ('state_size', 0, r'model\.state_size'),
    ('time_step_rank', -1, r'model\.time_step_rank'),
    ('time_step_min', 0.5, r'model\.time_step_min=0\.5'),
    ('num_heads', 2, r'model\.num_heads is not a mamba model option'),
])
def test_bad_model_config_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    cfg = backbone_from_config(dict(TINY_MAMBA, **{field: value})).cfg
    cfg.validate()


def test_init_follows_mamba():
  bb = backbone_from_config(dict(TINY_MAMBA, time_step_min=0.01, time_step_max=0.05))
  p = bb.init(jax.random.PRNGKey(0))['layers_0']['mixer']
  np.testing.assert_allclose(np.exp(p['A_log'][3]), np.arange(1, 5))  # S4D-real: A = -(1..N)
  np.testing.assert_array_equal(p['D'], 1.0)
  dt = np.asarray(jax.nn.softplus(p['dt_proj']['bias']))
  assert 0.01 - 1e-6 <= dt.min() and dt.max() <= 0.05 + 1e-6


def test_full_context_memory_is_the_state():
  method, _ = tiny_method(model=dict(kind='mamba'), method='full_context')
  cfg = method.backbone.cfg
  want = cfg.num_layers * cfg.d_inner * (cfg.state_size + cfg.conv_kernel - 1)
  assert method.memory_floats(10) == method.memory_floats(1000) == want
  llama, _ = tiny_method(method='full_context')
  assert llama.memory_floats(1000) == 10 * llama.memory_floats(100)  # a KV cache grows
  assert llama.memory_floats(10) == 2 * 2 * 10 * 1 * 8  # 2 layers, one key/value head of 8 (GQA)


def test_presets_swap_the_backbone_in_either_order():
  from configs import babi, common, kv_retrieval
  a = kv_retrieval.get_config('paper_n16,mamba,full_context')
  b = kv_retrieval.get_config('mamba,full_context,paper_n16')
  assert a.to_dict() == b.to_dict()
  assert a.model.kind == 'mamba' and (a.model.hidden_size, a.model.num_layers) == (128, 4)
  assert a.memory.method == 'full_context'
  assert kv_retrieval.get_config('mamba').memory.method == 'gradmem'  # only the backbone changes
  assert babi.get_config('mamba').model.kind == 'mamba'
  with pytest.raises(ValueError, match=r'model\.pretrained=.smollm2-135m'):
    babi.get_config('smollm2,mamba')
  # A sizing preset after a pretrained model's still sets its sizes (the build then refuses them
  # against the checkpoint): nothing is dropped for a family that has the field.
  assert babi.get_config('smollm2,tiny').model.hidden_size == 16
  with pytest.raises(ValueError, match=r'model\.rope_(theta|scaling) is not a mamba model option'):
    kv_retrieval.get_config('mamba,paper_rope')
  with pytest.raises(ValueError,
                     match=r'preset mamba would drop model\.rope_scaling, model\.rope_theta, set'):
    kv_retrieval.get_config('paper_rope,mamba')
  with pytest.raises(ValueError, match=r"'num_head' is a field of no backbone family"):
    common.update_model(kv_retrieval.get_config('tiny'), num_head=3)


@pytest.mark.parametrize('preset', ['full_context', 'gradmem'])  # RMT: GradMem's prefix READ
def test_runner_trains_the_methods_on_mamba(tmp_path, preset):
  from configs import kv_retrieval
  from gradmem_jax.training.train import train_and_evaluate
  arg = 'tiny,mamba' + ('' if preset == 'gradmem' else f',{preset}')
  results = train_and_evaluate(kv_retrieval.get_config(arg), str(tmp_path))
  assert results['steps'] == 6 and np.isfinite(results['final']['target_loss'])
  # The backbone names the run (beside the transformer's full context in one report).
  assert results['identity_fields'][:4] == ['task', 'n_pairs', 'backbone', 'method']
  assert results['backbone'] == 'mamba'
  if preset == 'full_context':  # tiny: 1 layer, d_inner 32, state 16, conv window 3
    assert results['memory_floats'] == 1 * 32 * (16 + 3)
  with open(os.path.join(tmp_path, 'config.json')) as f:
    assert json.load(f)['model']['kind'] == 'mamba'


@pytest.mark.parametrize('runtime', [dict(remat='full'), dict(scan_layers=True, remat='dots')])
def test_scanned_and_rematerialised_layers_give_the_loop(runtime):
  loop = backbone_from_config(dict(TINY_MAMBA, num_layers=3))
  other = backbone_from_config(dict(TINY_MAMBA, num_layers=3, **runtime))
  params = loop.init(jax.random.PRNGKey(0))
  embeds = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
  f = lambda bb: (lambda p: jnp.sum(jnp.tanh(bb.hidden(p, embeds, jnp.arange(7)))))
  np.testing.assert_allclose(f(other)(params), f(loop)(params), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(f(other))(params)),
                  jax.tree_util.tree_leaves(jax.grad(f(loop))(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_reports_tell_the_backbones_apart():
  """A run on the default decoder names no backbone; next to a Mamba run it reads as llama, in
  report groups and columns and in experiments.compare's table."""
  from experiments import compare
  from gradmem_jax import report
  base = {'task': 'kv', 'n_pairs': 2, 'method': 'full_context', 'memory_floats': 1, 'slug': 'x',
          'best': {'em': 0.9, 'token_acc': 0.9}, 'steps': 10, 'wall_time_s': 60.0, 'seed': 0}
  old = dict(base, identity_fields=['task', 'n_pairs', 'method'])
  new = dict(base, backbone='mamba', identity_fields=['task', 'n_pairs', 'backbone', 'method'])
  rows = report.aggregate([old, new])
  assert [r['backbone'] for r in rows] == ['llama', 'mamba']
  assert report.columns_for(rows)[0] == 'backbone'
  table = compare.table_rows([old, new], {}, ['backbone', 'method'])
  assert [(r['backbone'], r['method']) for r in table] == [('llama', 'full_context'),
                                                           ('mamba', 'full_context')]
