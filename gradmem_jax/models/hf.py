"""Loading Hugging Face checkpoints (config.json + *.safetensors) into our Flax decoders.

`model_config_from_hf` turns a Hugging Face `config.json` (model_type 'llama' or 'gpt2') into our
`config.model` dict; `load_hf_params` reads the safetensors weights into the parameter tree that
`Backbone.init` produces (transposing torch Linear weights where needed) and checks that every
parameter is present with the right shape and that no tensor is left over; `load_hf_checkpoint`
does both. Features our decoders do not implement raise a ValueError naming the config field.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradmem_jax.models import Backbone, backbone_from_config

Params = Any
SUPPORTED_MODEL_TYPES = ('gpt2', 'llama')
LLAMA_ROPE_TYPES = ('default', 'llama3')
# Both are the tanh approximation of GELU (jax.nn.gelu(approximate=True)).
GPT2_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh')
# Prefixes of the base model inside a *ForCausalLM / *LMHeadModel checkpoint.
_PREFIXES = ('model.', 'transformer.')
_DEFAULT_PREFIX = {'llama': 'model.', 'gpt2': 'transformer.'}
# Non-parameter buffers that some checkpoints carry (causal masks, rotary tables).
_KNOWN_BUFFERS = re.compile(
    r'^(?:(?:layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq'
    r'|h\.\d+\.attn\.(?:bias|masked_bias))$')


# ----------------------------------------------------------------------------------------------
# config.json -> config.model


def _need(c: Mapping[str, Any], *names: str) -> Any:
  """The first of `names` present (not None) in the config, else a ValueError naming it."""
  for n in names:
    if c.get(n) is not None:
      return c[n]
  raise ValueError(f"config.json has no {names[0]!r} (needed for a {c.get('model_type')} model)")


def _llama_rope(c: Mapping[str, Any]) -> tuple[float, Optional[dict]]:
  """(rope_theta, rope_scaling) from either the legacy (`rope_theta` + `rope_scaling`) or the
  transformers-5 (`rope_parameters`) form. As in transformers, a legacy `rope_scaling` takes
  precedence over `rope_parameters`, and a theta inside the dict over a top-level `rope_theta`."""
  rp = c.get('rope_scaling') or c.get('rope_parameters') or {}
  field = 'rope_scaling' if c.get('rope_scaling') else 'rope_parameters'
  if not isinstance(rp, Mapping):
    raise ValueError(f'config.{field} must be a dict, got {type(rp).__name__}')
  if any(isinstance(v, Mapping) for v in rp.values()):
    raise ValueError(f'config.{field} is nested per layer type, which is not supported; allowed: '
                     f'one flat dict for all layers')
  theta = float(rp.get('rope_theta', c.get('rope_theta', 10000.0)))
  partial = rp.get('partial_rotary_factor', c.get('partial_rotary_factor'))
  if partial is not None and float(partial) != 1.0:
    raise ValueError(f'config.partial_rotary_factor={partial} is not supported; allowed: 1.0')
  rope_type = rp.get('rope_type', rp.get('type', 'default'))
  if rope_type not in LLAMA_ROPE_TYPES:
    raise ValueError(f'config.{field}.rope_type={rope_type!r} is not supported; allowed: '
                     f'{list(LLAMA_ROPE_TYPES)}')
  if rope_type == 'default':
    return theta, None
  for k in ('factor', 'low_freq_factor', 'high_freq_factor'):
    if rp.get(k) is None:
      raise ValueError(f"config.{field}.{k} is required for rope_type 'llama3'")
  # transformers: a top-level original_max_position_embeddings wins, then the dict's, then
  # max_position_embeddings.
  old_len = c.get('original_max_position_embeddings')
  if old_len is None:
    old_len = rp.get('original_max_position_embeddings', c.get('max_position_embeddings'))
  if old_len is None:
    raise ValueError(f'config.{field}.original_max_position_embeddings is required for '
                     f"rope_type 'llama3'")
  if float(rp['high_freq_factor']) == float(rp['low_freq_factor']):
    raise ValueError(f'config.{field}: high_freq_factor must differ from low_freq_factor')
  return theta, {
      'rope_type': 'llama3',
      'factor': float(rp['factor']),
      'low_freq_factor': float(rp['low_freq_factor']),
      'high_freq_factor': float(rp['high_freq_factor']),
      'original_max_position_embeddings': int(old_len),
  }


def _llama_config(c: Mapping[str, Any]) -> dict:
  act = c.get('hidden_act', 'silu')
  if act != 'silu':
    raise ValueError(f"config.hidden_act={act!r} is not supported for llama; allowed: ['silu']")
  for f in ('attention_bias', 'mlp_bias'):
    if c.get(f):
      raise ValueError(f'config.{f}={c[f]!r} is not supported (our Llama has no biases); '
                       f'allowed: false')
  hidden = int(_need(c, 'hidden_size'))
  heads = int(_need(c, 'num_attention_heads'))
  theta, scaling = _llama_rope(c)
  out = {
      'kind': 'llama',
      'vocab_size': int(_need(c, 'vocab_size')),
      'hidden_size': hidden,
      'intermediate_size': int(_need(c, 'intermediate_size')),
      'num_layers': int(_need(c, 'num_hidden_layers')),
      'num_heads': heads,
      'num_kv_heads': int(c.get('num_key_value_heads') or heads),
      'rms_eps': float(c.get('rms_norm_eps', 1e-6)),        # transformers' LlamaConfig default
      'rope_theta': theta,
      'rope_scaling': scaling,
      'tie_embeddings': bool(c.get('tie_word_embeddings', False)),  # LlamaConfig default
      'max_positions': int(c.get('max_position_embeddings', 2048)),
      'init_std': float(c.get('initializer_range', 0.02)),
  }
  head_dim = c.get('head_dim')
  if head_dim is not None and (hidden % heads or int(head_dim) != hidden // heads):
    out['head_dim'] = int(head_dim)
  return out


def _gpt2_config(c: Mapping[str, Any]) -> dict:
  act = c.get('activation_function', 'gelu_new')
  if act not in GPT2_ACTIVATIONS:
    raise ValueError(f'config.activation_function={act!r} is not supported for gpt2; allowed: '
                     f'{list(GPT2_ACTIVATIONS)}')
  for f, want in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                  ('reorder_and_upcast_attn', False), ('add_cross_attention', False),
                  ('tie_word_embeddings', True)):
    if bool(c.get(f, want)) != want:
      raise ValueError(f'config.{f}={c[f]!r} is not supported for gpt2; allowed: '
                       f'{str(want).lower()}')
  hidden = int(_need(c, 'n_embd', 'hidden_size'))
  inner = c.get('n_inner')
  return {
      'kind': 'gpt2',
      'vocab_size': int(_need(c, 'vocab_size')),
      'hidden_size': hidden,
      'num_layers': int(_need(c, 'n_layer', 'num_hidden_layers')),
      'num_heads': int(_need(c, 'n_head', 'num_attention_heads')),
      'intermediate_size': int(inner) if inner is not None else 4 * hidden,
      'max_positions': int(_need(c, 'n_positions', 'max_position_embeddings')),
      'layer_norm_eps': float(c.get('layer_norm_epsilon', 1e-5)),
      'embd_dropout': float(c.get('embd_pdrop', 0.1)),
      'attn_dropout': float(c.get('attn_pdrop', 0.1)),
      'resid_dropout': float(c.get('resid_pdrop', 0.1)),
      'init_std': float(c.get('initializer_range', 0.02)),
  }


def model_config_from_hf(config_json: Mapping[str, Any]) -> dict:
  """Our `config.model` dict (with 'kind') for a Hugging Face config.json dict."""
  model_type = config_json.get('model_type')
  if model_type == 'llama':
    return _llama_config(config_json)
  if model_type == 'gpt2':
    return _gpt2_config(config_json)
  raise ValueError(f'config.model_type={model_type!r} is not supported; allowed: '
                   f'{list(SUPPORTED_MODEL_TYPES)}')


# ----------------------------------------------------------------------------------------------
# safetensors reading


_ST_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64, 'I32': np.int32,
    'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


def _raw_dtype(name: str):
  if name in _ST_DTYPES:
    return np.dtype(_ST_DTYPES[name])
  import ml_dtypes  # ships with jax; numpy itself has no bfloat16 / float8
  extra = {'BF16': ml_dtypes.bfloat16, 'F8_E4M3': ml_dtypes.float8_e4m3fn,
           'F8_E5M2': ml_dtypes.float8_e5m2}
  if name not in extra:
    raise ValueError(f'safetensors dtype {name!r} is not supported')
  return np.dtype(extra[name])


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
  """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian data), used
  for dtypes that `safetensors.numpy` cannot express (bfloat16, float8)."""
  data = np.memmap(path, dtype=np.uint8, mode='r')
  n = int(np.frombuffer(data[:8].tobytes(), dtype='<u8')[0])
  header = json.loads(data[8:8 + n].tobytes().decode('utf-8'))
  base = 8 + n
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype = _raw_dtype(info['dtype'])
    start, end = info['data_offsets']
    arr = np.frombuffer(data[base + start:base + end].tobytes(), dtype=dtype.newbyteorder('<'))
    out[name] = arr.reshape(info['shape'])
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except TypeError:  # e.g. "data type 'bfloat16' not understood"
    return _read_safetensors_raw(path)


def _checkpoint_tensors(checkpoint_dir: str) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint, by their name in the files."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f'checkpoint directory {checkpoint_dir!r} does not exist')
  names = sorted(os.listdir(checkpoint_dir))
  indexes = [n for n in names if n.endswith('.safetensors.index.json')]
  weight_map: dict[str, str] = {}
  if indexes:
    for idx in indexes:
      with open(os.path.join(checkpoint_dir, idx)) as f:
        weight_map.update(json.load(f).get('weight_map', {}))
    files = sorted(set(weight_map.values()))
    for fname in files:
      if not os.path.isfile(os.path.join(checkpoint_dir, fname)):
        raise FileNotFoundError(f'{os.path.join(checkpoint_dir, fname)} is listed in '
                                f'{indexes[0]} but does not exist')
  else:
    files = [n for n in names if n.endswith('.safetensors')]
  if not files:
    others = [n for n in names if n.endswith(('.bin', '.pt', '.pth', '.msgpack', '.h5'))]
    hint = f' (found {others}; only safetensors weights are supported)' if others else ''
    raise FileNotFoundError(f'no *.safetensors files in {checkpoint_dir!r}{hint}')
  tensors: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  for fname in files:
    for k, v in _read_safetensors(os.path.join(checkpoint_dir, fname)).items():
      if k in tensors:
        raise ValueError(f'tensor {k!r} appears in both {origin[k]} and {fname}')
      tensors[k], origin[k] = v, fname
  for k, fname in weight_map.items():
    if origin.get(k) != fname:
      raise ValueError(f'the safetensors index says tensor {k!r} is in {fname}, but it is '
                       f'{"in " + origin[k] if k in origin else "in no file"}')
  return tensors


# ----------------------------------------------------------------------------------------------
# name mapping


def _expected_hf_names(backbone: Backbone) -> dict[tuple[str, ...], tuple[str, bool]]:
  """Our parameter path -> (HF tensor name without the base-model prefix, transpose?)."""
  cfg = backbone.cfg
  table: dict[tuple[str, ...], tuple[str, bool]] = {}
  if backbone.kind == 'llama':
    table[('embed_tokens', 'embedding')] = ('embed_tokens.weight', False)
    for i in range(cfg.num_layers):
      p = f'layers_{i}'
      for norm in ('input_layernorm', 'post_attention_layernorm'):
        table[(p, norm, 'scale')] = (f'layers.{i}.{norm}.weight', False)
      for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
        table[(p, 'self_attn', proj, 'kernel')] = (f'layers.{i}.self_attn.{proj}.weight', True)
      for proj in ('gate_proj', 'up_proj', 'down_proj'):
        table[(p, 'mlp', proj, 'kernel')] = (f'layers.{i}.mlp.{proj}.weight', True)
    table[('norm', 'scale')] = ('norm.weight', False)
    if not cfg.tie_embeddings:
      table[('lm_head', 'kernel')] = ('lm_head.weight', True)
  elif backbone.kind == 'gpt2':
    table[('wte', 'embedding')] = ('wte.weight', False)
    table[('wpe', 'embedding')] = ('wpe.weight', False)
    # Our name -> HF module path inside block h.{i}. GPT-2's Conv1D stores weights as [in, out].
    modules = {'ln_1': 'ln_1', 'ln_2': 'ln_2', 'c_attn': 'attn.c_attn', 'c_proj': 'attn.c_proj',
               'c_fc': 'mlp.c_fc', 'mlp_c_proj': 'mlp.c_proj'}
    for i in range(cfg.num_layers):
      for ours, theirs in modules.items():
        is_ln = ours.startswith('ln_')
        table[(f'h_{i}', ours, 'scale' if is_ln else 'kernel')] = (f'h.{i}.{theirs}.weight', False)
        table[(f'h_{i}', ours, 'bias')] = (f'h.{i}.{theirs}.bias', False)
    table[('ln_f', 'scale')] = ('ln_f.weight', False)
    table[('ln_f', 'bias')] = ('ln_f.bias', False)
  else:
    raise ValueError(f'backbone.kind={backbone.kind!r} cannot load Hugging Face weights; allowed: '
                     f'{list(SUPPORTED_MODEL_TYPES)}')
  return table


def _strip_prefix(name: str) -> str:
  if name.startswith('lm_head.'):
    return name
  for p in _PREFIXES:
    if name.startswith(p):
      return name[len(p):]
  return name


def _path_str(path: tuple[str, ...]) -> str:
  return '/'.join(path)


def _tied_head_name(backbone: Backbone) -> Optional[str]:
  """The embedding an `lm_head.weight` must equal when the output projection is tied."""
  if backbone.kind == 'gpt2':
    return 'wte.weight'
  return 'embed_tokens.weight' if backbone.cfg.tie_embeddings else None


def load_hf_params(checkpoint_dir: str, backbone: Backbone) -> Params:
  """Parameters for `backbone` from the *.safetensors files in `checkpoint_dir`, validated against
  the shapes `backbone.init` produces and cast to its param dtype."""
  checkpoint_dir = os.fspath(checkpoint_dir)
  raw = _checkpoint_tensors(checkpoint_dir)
  tensors: dict[str, np.ndarray] = {}
  full_name: dict[str, str] = {}
  for k, v in raw.items():
    short = _strip_prefix(k)
    if short in tensors:
      raise ValueError(f'tensors {full_name[short]!r} and {k!r} both map to {short!r}')
    tensors[short], full_name[short] = v, k
  prefixes = [k[:len(k) - len(s)] for s, k in full_name.items() if s != 'lm_head.weight']
  prefix = max(set(prefixes), key=prefixes.count) if prefixes else _DEFAULT_PREFIX[backbone.kind]
  hf_key = lambda short: short if short.startswith('lm_head.') else prefix + short

  shapes = jax.eval_shape(backbone.init, jax.random.PRNGKey(0))
  flat_shapes = {tuple(getattr(k, 'key', str(k)) for k in path): leaf
                 for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  table = _expected_hf_names(backbone)
  if set(table) != set(flat_shapes):  # the decoders changed and this table did not
    diff = sorted(_path_str(p) for p in set(table) ^ set(flat_shapes))
    raise RuntimeError(f'hf.py name table is out of date with the {backbone.kind} decoder: {diff}')

  missing = [(p, n) for p, (n, _) in table.items() if n not in tensors]
  if missing:
    p, n = missing[0]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ValueError(f'checkpoint {checkpoint_dir!r} has no tensor {hf_key(n)!r}, needed for '
                     f'parameter {_path_str(p)}{more}')

  used = {n for n, _ in table.values()}
  head_of = _tied_head_name(backbone)
  unused = []
  for short in sorted(tensors):
    if short in used or _KNOWN_BUFFERS.match(short):
      continue
    if short == 'lm_head.weight' and head_of is not None:
      if not (tensors[short].shape == tensors[head_of].shape
              and np.array_equal(tensors[short], tensors[head_of])):
        raise ValueError(f"checkpoint tensor 'lm_head.weight' differs from {hf_key(head_of)!r}, "
                         f'but the model ties its input and output embeddings '
                         f'(tie_word_embeddings=true)')
      continue
    unused.append(full_name[short])
  if unused:
    raise ValueError(f'checkpoint {checkpoint_dir!r} has tensors the {backbone.kind} model does '
                     f'not use: {unused[:5]}{" ..." if len(unused) > 5 else ""} '
                     f'({len(unused)} in all)')

  flat_params = {}
  for path, (name, transpose) in table.items():
    want = flat_shapes[path]
    arr = tensors[name]
    want_hf = tuple(reversed(want.shape)) if transpose else tuple(want.shape)
    if tuple(arr.shape) != want_hf:
      layout = ' (torch layout [out, in])' if transpose else ''
      raise ValueError(f'parameter {_path_str(path)} (checkpoint tensor {hf_key(name)!r}): expected '
                       f'shape {want_hf}{layout}, found {tuple(arr.shape)}')
    if not (np.issubdtype(arr.dtype, np.floating) or 'float' in arr.dtype.name):  # + bfloat16
      raise ValueError(f'checkpoint tensor {hf_key(name)!r} has dtype {arr.dtype}; expected a '
                       f'floating-point tensor')
    if transpose:
      arr = arr.T
    flat_params[path] = jnp.asarray(np.asarray(arr).astype(want.dtype))

  params: dict = {}
  for path, value in flat_params.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return params


def load_hf_checkpoint(checkpoint_dir: str, **overrides) -> tuple[Backbone, Params]:
  """(Backbone, params) from a Hugging Face checkpoint directory (config.json + *.safetensors).

  `overrides` are `config.model` fields applied on top of the converted config (e.g. dtype,
  param_dtype, remat, or dropout rates); architecture changes fail the shape check.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f'checkpoint directory {checkpoint_dir!r} does not exist')
  cfg_path = os.path.join(checkpoint_dir, 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{cfg_path} not found: a Hugging Face checkpoint directory needs a '
                            f'config.json next to its *.safetensors weights')
  with open(cfg_path) as f:
    model_cfg = model_config_from_hf(json.load(f))
  if 'kind' in overrides and overrides['kind'] != model_cfg['kind']:
    raise ValueError(f"override kind={overrides['kind']!r} contradicts the checkpoint's model_type "
                     f"({model_cfg['kind']!r})")
  model_cfg.update(overrides)
  backbone = backbone_from_config(model_cfg)
  return backbone, load_hf_params(checkpoint_dir, backbone)


__all__ = ['model_config_from_hf', 'load_hf_params', 'load_hf_checkpoint']
