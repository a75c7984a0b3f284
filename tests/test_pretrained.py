"""Pretrained backbones: Qwen2-style attention biases against transformers, and one name for a
pretrained model (`model.pretrained`: 'smollm2-135m', an HF directory or a .gguf file), with
`data.tokenizer='model'` and `GradMemModel.from_pretrained`."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmem_jax.models import backbone_from_config, pretrained
from gradmem_jax.models.hf import load_hf_checkpoint, model_config_from_hf

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Same measure as tests/test_hf_equivalence.py: max |logit diff| of O(1) float32 logits.
TOL = 1e-5


def _randomize(model, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('norm.weight'):
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.15 * noise)  # biases too: a dropped or misplaced bias is then visible


def _logits_diff(model, path, seq=12):
  bb, params = load_hf_checkpoint(path)
  ids = np.random.default_rng(1).integers(0, bb.vocab_size, (2, seq))
  h = bb.hidden(params, bb.embed(params, jnp.asarray(ids)), jnp.arange(seq))
  ours = np.asarray(bb.logits(params, h))
  with torch.no_grad():
    theirs = model(torch.from_numpy(ids).long()).logits.float().numpy()
  assert np.abs(theirs).max() > 0.5
  return bb, params, float(np.abs(ours - theirs).max())


def _qwen2(tmp_path, **kw):
  torch.manual_seed(0)
  cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
             attn_implementation='eager')
  cfg.update(kw)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg)).eval()
  _randomize(model)
  model.save_pretrained(tmp_path, safe_serialization=True)
  return model


@pytest.mark.parametrize('tied', [False, True])
def test_qwen2_biases_match_transformers(tmp_path, tied):
  model = _qwen2(tmp_path, tie_word_embeddings=tied)
  bb, params, diff = _logits_diff(model, tmp_path)
  assert bb.cfg.attention_bias and not bb.cfg.o_proj_bias
  attn = params['layers_0']['self_attn']
  assert set(attn['q_proj']) == {'kernel', 'bias'} and set(attn['o_proj']) == {'kernel'}
  assert diff < TOL, diff


def test_qwen2_without_biases_differs(tmp_path):
  """The biases matter: zeroing them in our params moves the logits far past TOL."""
  model = _qwen2(tmp_path)
  bb, params, _ = _logits_diff(model, tmp_path)
  no_bias = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if getattr(p[-1], 'key', '') == 'bias' else x, params)
  ids = jnp.arange(12)[None] % bb.vocab_size
  f = lambda ps: bb.logits(ps, bb.hidden(ps, bb.embed(ps, ids), jnp.arange(12)))
  assert float(jnp.abs(f(params) - f(no_bias)).max()) > 1e-2


def test_llama_attention_bias_matches_transformers(tmp_path):
  """Llama's attention_bias=true: biases on q, k, v and o."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                 max_position_embeddings=64, rms_norm_eps=1e-6,
                                 attention_bias=True, attn_implementation='eager')
  model = transformers.LlamaForCausalLM(cfg).eval()
  _randomize(model)
  model.save_pretrained(tmp_path, safe_serialization=True)
  bb, params, diff = _logits_diff(model, tmp_path)
  assert bb.cfg.attention_bias and bb.cfg.o_proj_bias
  assert diff < TOL, diff


def test_qwen2_config_mapping_and_refusals():
  base = dict(model_type='qwen2', vocab_size=10, hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
              rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=128)
  out = model_config_from_hf(base)
  assert out['kind'] == 'llama' and out['attention_bias'] and not out['o_proj_bias']
  assert out['rope_theta'] == 1e6 and out['num_kv_heads'] == 1 and not out['tie_embeddings']
  with pytest.raises(ValueError, match='use_sliding_window'):
    model_config_from_hf(dict(base, use_sliding_window=True))
  # Bias-free Llama models are unchanged: no bias parameters.
  llama = model_config_from_hf(dict(base, model_type='llama'))
  assert not llama['attention_bias'] and not llama['o_proj_bias']
  bb = backbone_from_config(llama)
  shapes = jax.eval_shape(bb.init, jax.random.PRNGKey(0))
  assert set(shapes['layers_0']['self_attn']['q_proj']) == {'kernel'}


# ----------------------------------------------------------------------------------------------
# One name for a pretrained model.


def test_model_pretrained_and_its_alias(tmp_path):
  _qwen2(tmp_path)
  new = pretrained.resolve_model_config({'pretrained': str(tmp_path), 'dtype': 'bfloat16'})
  old = pretrained.resolve_model_config({'hf_checkpoint': str(tmp_path), 'dtype': 'bfloat16'})
  assert new['pretrained'] == old['hf_checkpoint'] == str(tmp_path)
  assert {k: v for k, v in new.items() if k != 'pretrained'} == \
      {k: v for k, v in old.items() if k != 'hf_checkpoint'}
  assert new['attention_bias'] and new['dtype'] == 'bfloat16'
  bb = backbone_from_config(new)
  ref = load_hf_checkpoint(tmp_path)[1]
  got = pretrained.load_params(new, bb)
  for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='name different checkpoints'):
    pretrained.source({'pretrained': str(tmp_path), 'hf_checkpoint': '/elsewhere'})
  with pytest.raises(FileNotFoundError, match=r"model.pretrained='nope'.*smollm2-135m"):
    pretrained.resolve_model_config({'pretrained': 'nope'})
  with pytest.raises(ValueError, match='model.hidden_size=7 differs'):
    pretrained.resolve_model_config({'pretrained': str(tmp_path), 'hidden_size': 7})
  bad = tmp_path / 'x.bin'
  bad.write_bytes(b'notgguf')
  with pytest.raises(ValueError, match='not a GGUF file'):
    pretrained.locate(str(bad))


def _smollm2_or_skip():
  from gradmem_jax.models import gguf
  try:
    return gguf.smollm2_135m_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_smollm2_by_name_and_its_tokenizer():
  path = _smollm2_or_skip()
  from gradmem_jax.data.text import make_tokenizer
  cfg = pretrained.resolve_model_config({'pretrained': 'smollm2-135m'})
  assert cfg['kind'] == 'llama' and cfg['num_layers'] == 30 and cfg['hidden_size'] == 576
  assert cfg['pretrained'] == 'smollm2-135m'
  assert pretrained.locate('smollm2-135m') == ('gguf', path)
  for spec in ('smollm2-135m', path):
    tok = make_tokenizer(spec)
    ids = tok.encode('Anna lives in Lyon, 2019.')
    assert tok.decode(ids) == 'Anna lives in Lyon, 2019.' and tok.vocab_size == 49152


def test_short_squad_smollm2_preset_validates():
  _smollm2_or_skip()
  from configs import short_squad
  c = short_squad.get_config('smollm2')
  assert c.model.pretrained == 'smollm2-135m' and c.data.tokenizer == 'model'
  assert c.memory.freeze_backbone and c.memory.lora_rank == 8


@pytest.mark.skipif(os.environ.get('GRADMEM_SLOW') != '1',
                    reason='loads the real 135M model and compiles a 30-layer WRITE (minutes on '
                           '2 CPU cores); GRADMEM_SLOW=1 runs it')
def test_from_pretrained_smollm2_writes_and_answers():
  _smollm2_or_skip()
  from gradmem_jax.api import GradMemModel
  model = GradMemModel.from_pretrained('smollm2-135m', num_memory=4, K=1, inner_lr=0.003)
  mem = model.write('Anna lives in Lyon.')
  assert mem.state['memory'].shape == (1, 4, 576)
  out = model.answer(mem, ['Question: Where does Anna live?\nAnswer:'], max_new_tokens=3)
  assert len(out) == 1 and isinstance(out[0], str)


def test_from_pretrained_hf_directory_writes_and_reads_like_transformers(tmp_path):
  """`GradMemModel.from_pretrained` on a Hugging Face directory (config, safetensors, tokenizer
  files), end to end: one WRITE step equals a step of gradient descent on transformers' own
  reconstruction loss over `inputs_embeds` [M0; context], differentiated by PyTorch autograd, and
  READ's answer log-likelihood equals transformers' on [M1; query; answer]."""
  from gradmem_jax.api import GradMemModel
  from test_squad import _save_hf_tokenizer
  texts = ['the cat sat on the mat', 'where is the cat? on the mat', 'a dog ran in the park']
  n_tok = _save_hf_tokenizer(tmp_path, texts * 4)
  torch_model = _qwen2(tmp_path, vocab_size=max(n_tok, 64))
  m, lr = 3, 0.5
  model = GradMemModel.from_pretrained(str(tmp_path), num_memory=m, K=1, inner_lr=lr,
                                       write_head=False)
  context, query, answer = 'the cat sat on the mat', 'where is the cat?', ' on the mat'
  mem = model.write(context)
  m0 = np.asarray(model.params['memory']['mem_init'])
  m1 = np.asarray(mem.state['memory'][0])
  assert np.abs(m1 - m0).max() > 1e-4  # the WRITE moved the memory
  ids = torch.from_numpy(model.tokenizer.encode(context).astype(np.int64))
  emb = torch_model.get_input_embeddings()
  mem_t = torch.tensor(m0, requires_grad=True)
  x = torch.cat([mem_t, emb(ids[:-1]).detach()])[None]
  logits = torch_model(inputs_embeds=x).logits[0, m - 1:]  # position m-1+t predicts context[t]
  loss = torch.nn.functional.cross_entropy(logits, ids)
  loss.backward()
  want_m1 = m0 - lr * mem_t.grad.numpy()
  np.testing.assert_allclose(m1, want_m1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(mem.stats['write_loss'][0, 0], loss.item(), rtol=1e-5)
  q, a = model.tokenizer.encode(query), model.tokenizer.encode(answer)
  qa = torch.from_numpy(np.concatenate([q, a]).astype(np.int64))
  with torch.no_grad():
    x = torch.cat([torch.from_numpy(m1.copy()), emb(qa[:-1])])[None]
    logp = torch.log_softmax(torch_model(inputs_embeds=x).logits[0], -1)
  pos = np.arange(len(q), len(q) + len(a))  # logits row m-1+t predicts qa[t]
  want = float(sum(logp[m - 1 + t, qa[t]] for t in pos))
  got = model.score(mem, query, answer)
  np.testing.assert_allclose(got['logprob'], want, rtol=1e-5, atol=1e-5)
