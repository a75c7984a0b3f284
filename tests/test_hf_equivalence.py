"""Our decoders with weights loaded from Hugging Face checkpoints match transformers' PyTorch models.

Tiny random models are built in PyTorch, saved with `save_pretrained` (safetensors), loaded with
`gradmem_jax.models.hf` and run on the same token ids; float32 logits must agree to TOL = 1e-5
(the README states the same number).
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

from gradmem_jax.models import backbone_from_config, common  # noqa: E402
from gradmem_jax.models.hf import (load_hf_checkpoint, load_hf_params,  # noqa: E402
                                   model_config_from_hf)

BATCH, SEQ = 2, 12
# Max |logit difference| measured on CPU (logits up to ~3-5 in magnitude, float32 ulp there
# 2.4e-7 .. 4.8e-7): 1.3e-6 .. 2.5e-6 for the Llama and GPT-2 models, 4.5e-6 with Llama-3 RoPE
# scaling (width 64, 24 positions). 1e-5 leaves 2x over the worst; a swapped, untransposed or
# mis-scaled tensor gives differences of 1e-2 and more.
TOL = 1e-5


def _randomize(model, seed: int = 0) -> None:
  """Replaces the default init (std 0.02, norms at 1, zero biases) with larger random values, so
  that logits are O(1) and a swapped or untransposed tensor cannot go unnoticed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_norm = name.endswith('norm.weight') or '.ln_' in name
      if is_norm and name.endswith('.weight'):
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_((0.1 if is_norm else 0.15) * noise)


def _llama(tmp_path, seed=0, **kw):
  torch.manual_seed(seed)
  cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
             rms_norm_eps=1e-6, tie_word_embeddings=True, attn_implementation='eager')
  cfg.update(kw)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
  _randomize(model, seed)
  model.save_pretrained(tmp_path, safe_serialization=True)
  return model


def _gpt2(tmp_path, seed=0, **kw):
  torch.manual_seed(seed)
  cfg = dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
             attn_implementation='eager')
  cfg.update(kw)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
  _randomize(model, seed)
  model.save_pretrained(tmp_path, safe_serialization=True)
  return model


def _ids(vocab: int, seq: int = SEQ, seed: int = 1) -> np.ndarray:
  gen = torch.Generator().manual_seed(seed)
  return torch.randint(0, vocab, (BATCH, seq), generator=gen).numpy()


def _ours(bb, params, ids: np.ndarray) -> np.ndarray:
  t = ids.shape[1]
  hidden = bb.hidden(params, bb.embed(params, jnp.asarray(ids)), jnp.arange(t), deterministic=True)
  return np.asarray(bb.logits(params, hidden))


def _theirs(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(ids).long()).logits.float().numpy()


def _check_equivalent(model, path, seq: int = SEQ):
  bb, params = load_hf_checkpoint(path)
  ids = _ids(bb.vocab_size, seq)
  ours, theirs = _ours(bb, params, ids), _theirs(model, ids)
  assert ours.shape == theirs.shape
  assert np.abs(theirs).max() > 0.5, 'logits too small for the comparison to mean much'
  diff = np.abs(ours - theirs).max()
  assert diff < TOL, f'max |logit diff| = {diff}'
  return bb, params, ids, theirs


# ----------------------------------------------------------------------------------------------
# Equivalence.


def test_llama_tied(tmp_path):
  model = _llama(tmp_path, tie_word_embeddings=True)
  bb, params, _, _ = _check_equivalent(model, tmp_path)
  assert bb.cfg.tie_embeddings and 'lm_head' not in params


def test_llama_untied(tmp_path):
  model = _llama(tmp_path, seed=1, tie_word_embeddings=False)
  bb, params, _, _ = _check_equivalent(model, tmp_path)
  assert not bb.cfg.tie_embeddings and params['lm_head']['kernel'].shape == (32, 64)


def test_llama_grouped_query_attention(tmp_path):
  model = _llama(tmp_path, seed=2, num_key_value_heads=2, tie_word_embeddings=False)
  bb, params, _, _ = _check_equivalent(model, tmp_path)
  assert bb.cfg.num_kv_heads == 2
  assert params['layers_0']['self_attn']['k_proj']['kernel'].shape == (32, 16)


def test_llama_sharded_checkpoint(tmp_path):
  torch.manual_seed(3)
  cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 tie_word_embeddings=False, attn_implementation='eager')
  model = transformers.LlamaForCausalLM(cfg).eval()
  _randomize(model, 3)
  model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size='10KB')
  assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  assert len(list(tmp_path.glob('*.safetensors'))) > 1
  _check_equivalent(model, tmp_path)


def test_llama3_rope_scaling(tmp_path):
  scaling = dict(rope_type='llama3', factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=8)
  model = _llama(tmp_path, seed=4, hidden_size=64, num_key_value_heads=2, rope_scaling=scaling,
                 max_position_embeddings=64)
  seq = 24  # well past original_max_position_embeddings
  bb, params, ids, theirs = _check_equivalent(model, tmp_path, seq=seq)
  scaling_ours = dict(bb.cfg.rope_scaling)
  assert scaling_ours['rope_type'] == 'llama3'
  assert scaling_ours['original_max_position_embeddings'] == 8

  # Our inverse frequencies equal transformers' and differ from the unscaled ones.
  dh = bb.cfg.dh
  scaled = common.rope_inv_freq(dh, bb.cfg.rope_theta, scaling_ours)
  plain = common.rope_inv_freq(dh, bb.cfg.rope_theta)
  np.testing.assert_allclose(scaled, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
  assert np.abs(scaled - plain).max() > 1e-3

  # And the scaling matters for the logits at this length.
  unscaled_bb = backbone_from_config({**model_config_from_hf(model.config.to_dict()),
                                      'rope_scaling': None})
  unscaled = _ours(unscaled_bb, params, ids)
  assert np.abs(unscaled - theirs).max() > 100 * TOL


def test_gpt2(tmp_path):
  model = _gpt2(tmp_path)
  bb, _, _, _ = _check_equivalent(model, tmp_path)
  assert bb.kind == 'gpt2' and bb.cfg.intermediate_size == 4 * 32
  assert bb.cfg.embd_dropout == 0.1  # dropout rates come over; deterministic=True turns it off


def test_bfloat16_checkpoint_is_cast_to_param_dtype(tmp_path):
  model = _llama(tmp_path / 'f32', seed=5, num_hidden_layers=1)
  model.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16', safe_serialization=True)
  bb, params = load_hf_checkpoint(tmp_path / 'bf16')
  assert params['norm']['scale'].dtype == jnp.float32
  want = model.model.layers[0].self_attn.q_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(np.asarray(params['layers_0']['self_attn']['q_proj']['kernel']),
                                want)
  bb16, params16 = load_hf_checkpoint(tmp_path / 'bf16', param_dtype='bfloat16')
  assert params16['embed_tokens']['embedding'].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------------------------
# Config conversion.


def test_config_conversion_llama_legacy_and_new_rope_forms():
  base = dict(model_type='llama', vocab_size=10, hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
  llama3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=16)
  legacy = model_config_from_hf({**base, 'rope_theta': 5e5,
                                 'rope_scaling': {'rope_type': 'llama3', **llama3}})
  new = model_config_from_hf({**base, 'rope_parameters': {'rope_type': 'llama3',
                                                          'rope_theta': 5e5, **llama3}})
  old_key = model_config_from_hf({**base, 'rope_theta': 5e5,
                                  'rope_scaling': {'type': 'llama3', **llama3}})
  assert legacy == new == old_key
  assert new['rope_theta'] == 5e5 and new['rope_scaling'] == {'rope_type': 'llama3', **llama3}
  assert new['num_kv_heads'] == 2 and 'head_dim' not in new
  plain = model_config_from_hf({**base, 'rope_parameters': {'rope_type': 'default',
                                                            'rope_theta': 1e4}})
  assert plain['rope_scaling'] is None and plain['rope_theta'] == 1e4
  assert model_config_from_hf({**base, 'head_dim': 16})['head_dim'] == 16
  for cfg in (legacy, plain):
    backbone_from_config(cfg)  # keys are fields of LlamaConfig


@pytest.mark.parametrize('bad, field', [
    (dict(model_type='mistral'), 'model_type'),
    (dict(model_type='llama', mlp_bias=True), 'mlp_bias'),
    (dict(model_type='llama', hidden_act='gelu'), 'hidden_act'),
    (dict(model_type='llama', rope_parameters={'rope_type': 'yarn', 'factor': 2.0}), 'rope_type'),
    (dict(model_type='gpt2', activation_function='relu'), 'activation_function'),
    (dict(model_type='gpt2', scale_attn_by_inverse_layer_idx=True),
     'scale_attn_by_inverse_layer_idx'),
    (dict(model_type='gpt2', reorder_and_upcast_attn=True), 'reorder_and_upcast_attn'),
    (dict(model_type='gpt2', tie_word_embeddings=False), 'tie_word_embeddings'),
])
def test_unsupported_config_raises(bad, field):
  full = dict(vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, n_embd=16, n_layer=1, n_head=2, n_positions=8)
  with pytest.raises(ValueError, match=field) as info:
    model_config_from_hf({**full, **bad})
  assert 'allowed' in str(info.value)


# ----------------------------------------------------------------------------------------------
# Validation errors.


def test_wrong_shape_names_parameter(tmp_path):
  _llama(tmp_path, num_hidden_layers=1)
  path = tmp_path / 'model.safetensors'
  tensors = safetensors_numpy.load_file(str(path))
  tensors['model.layers.0.mlp.up_proj.weight'] = np.zeros((47, 32), np.float32)
  safetensors_numpy.save_file(tensors, str(path), metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'layers_0/mlp/up_proj/kernel') as info:
    load_hf_checkpoint(tmp_path)
  msg = str(info.value)
  assert 'model.layers.0.mlp.up_proj.weight' in msg and '(48, 32)' in msg and '(47, 32)' in msg


def test_missing_and_unused_tensors(tmp_path):
  _gpt2(tmp_path, n_layer=1)
  path = tmp_path / 'model.safetensors'
  tensors = safetensors_numpy.load_file(str(path))
  bb = backbone_from_config(model_config_from_hf(json.loads((tmp_path / 'config.json').read_text())))

  missing = {k: v for k, v in tensors.items() if k != 'transformer.h.0.mlp.c_fc.bias'}
  safetensors_numpy.save_file(missing, str(path))
  with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.bias"):
    load_hf_params(tmp_path, bb)

  extra = {**tensors, 'transformer.h.0.attn.bias': np.ones((1, 1, 32, 32), np.float32),
           'transformer.h.0.attn.q_norm.weight': np.ones((8,), np.float32)}
  safetensors_numpy.save_file(extra, str(path))
  with pytest.raises(ValueError, match=r'q_norm') as info:
    load_hf_params(tmp_path, bb)
  assert 'attn.bias' not in str(info.value)  # a known buffer, ignored

  # A tied output projection stored anyway (as some checkpoints do) must equal the embedding.
  tied = {**tensors, 'lm_head.weight': tensors['transformer.wte.weight'].copy()}
  safetensors_numpy.save_file(tied, str(path))
  load_hf_params(tmp_path, bb)
  tied['lm_head.weight'] = tied['lm_head.weight'] + 1.0
  safetensors_numpy.save_file(tied, str(path))
  with pytest.raises(ValueError, match='lm_head.weight'):
    load_hf_params(tmp_path, bb)

  # Without the base-model prefix (a GPT2Model checkpoint) it loads as well.
  bare = {k.removeprefix('transformer.'): v for k, v in tensors.items()}
  safetensors_numpy.save_file(bare, str(path))
  params = load_hf_params(tmp_path, bb)
  np.testing.assert_array_equal(np.asarray(params['wte']['embedding']), tensors['transformer.wte.weight'])


def test_missing_files_raise(tmp_path):
  _llama(tmp_path, num_hidden_layers=1)
  os.remove(tmp_path / 'config.json')
  with pytest.raises(FileNotFoundError, match='config.json'):
    load_hf_checkpoint(tmp_path)
  with pytest.raises(FileNotFoundError):
    load_hf_checkpoint(tmp_path / 'does_not_exist')

  weights_only = tmp_path / 'no_weights'
  weights_only.mkdir()
  (weights_only / 'config.json').write_text(json.dumps(dict(
      model_type='gpt2', vocab_size=10, n_embd=16, n_layer=1, n_head=2, n_positions=8)))
  with pytest.raises(FileNotFoundError, match='safetensors'):
    load_hf_checkpoint(weights_only)


def test_unsupported_model_type_checkpoint(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'mistral'}))
  with pytest.raises(ValueError, match='model_type'):
    load_hf_checkpoint(tmp_path)
