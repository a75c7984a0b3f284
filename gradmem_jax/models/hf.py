"""Loading Hugging Face checkpoints (config.json + *.safetensors) into our Flax decoders.

`model_config_from_hf` turns a Hugging Face `config.json` (model_type 'llama', 'gpt2', 'mamba',
...) into our `config.model` dict through the family registered for that model_type
(`models.base.HFSpec`);
`load_hf_params` reads the safetensors weights into the parameter tree that
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

from gradmem_jax.models.base import FAMILIES, Backbone, HFSpec, backbone_from_config

Params = Any


# ----------------------------------------------------------------------------------------------
# config.json -> config.model


def need(c: Mapping[str, Any], *names: str) -> Any:
  """The first of `names` present (not None) in the config, else a ValueError naming it."""
  for n in names:
    if c.get(n) is not None:
      return c[n]
  raise ValueError(f"config.json has no {names[0]!r} (needed for a {c.get('model_type')} model)")


def _families_by_model_type() -> dict[str, str]:
  return {t: name for name in FAMILIES for t in (FAMILIES.get(name).hf.model_types
                                                 if FAMILIES.get(name).hf else ())}


def model_config_from_hf(config_json: Mapping[str, Any]) -> dict:
  """Our `config.model` dict (with 'kind') for a Hugging Face config.json dict."""
  model_type = config_json.get('model_type')
  by_type = _families_by_model_type()
  if model_type not in by_type:
    raise ValueError(f'config.model_type={model_type!r} is not supported; allowed: '
                     f'{sorted(by_type)}')
  return FAMILIES.get(by_type[model_type]).hf.config_from_hf(config_json)


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


def _hf_spec(backbone: Backbone) -> HFSpec:
  spec = backbone.family.hf
  if spec is None:
    raise ValueError(f'model.kind={backbone.kind!r} cannot load Hugging Face weights; families '
                     f'that can: {[n for n in FAMILIES if FAMILIES.get(n).hf]}')
  return spec


def _strip_prefix(name: str) -> str:
  if name.startswith('lm_head.'):
    return name
  prefixes = {FAMILIES.get(n).hf.default_prefix for n in FAMILIES if FAMILIES.get(n).hf}
  for p in sorted(prefixes):
    if name.startswith(p):
      return name[len(p):]
  return name


def _path_str(path: tuple[str, ...]) -> str:
  return '/'.join(path)


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
  spec = _hf_spec(backbone)
  prefix = max(set(prefixes), key=prefixes.count) if prefixes else spec.default_prefix
  hf_key = lambda short: short if short.startswith('lm_head.') else prefix + short

  shapes = jax.eval_shape(backbone.init, jax.random.PRNGKey(0))
  flat_shapes = {tuple(getattr(k, 'key', str(k)) for k in path): leaf
                 for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  table = spec.name_table(backbone.cfg)
  if set(table) != set(flat_shapes):  # the decoders changed and this table did not
    diff = sorted(_path_str(p) for p in set(table) ^ set(flat_shapes))
    raise RuntimeError(f'the Hugging Face name table is out of date with the {backbone.kind} decoder: {diff}')

  missing = [(p, n) for p, (n, _) in table.items() if n not in tensors]
  if missing:
    p, n = missing[0]
    more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
    raise ValueError(f'checkpoint {checkpoint_dir!r} has no tensor {hf_key(n)!r}, needed for '
                     f'parameter {_path_str(p)}{more}')

  used = {n for n, _ in table.values()}
  head_of = spec.tied_head(backbone.cfg)
  unused = []
  for short in sorted(tensors):
    if short in used or any(re.fullmatch(b, short) for b in spec.buffers):
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
  return unflatten(flat_params)


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  """{('a', 'b'): x} -> {'a': {'b': x}}: a parameter tree from its leaves by path."""
  params: dict = {}
  for path, value in flat.items():
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


__all__ = ['model_config_from_hf', 'load_hf_params', 'load_hf_checkpoint', 'need', 'unflatten']
