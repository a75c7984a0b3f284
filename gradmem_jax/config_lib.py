"""Config plumbing: `get_config(arg)` argument parsing, typed overrides and validation.

`--config=configs/kv_retrieval.py:paper_n16,K=2,inner_lr=0.08`: comma-separated tokens after the
colon; a bare word selects a preset, `key=value` overrides a field. Keys are dotted paths
(`optim.lr=3e-4`) or short aliases the config file declares (`K` -> `memory.K`). Values are parsed
with the type of the field they replace; unknown keys and wrong types fail here, before any compute,
with a message naming the key.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Callable, Mapping, Optional

import ml_collections

from gradmem_jax.registry import dataclass_defaults

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('0', 'false', 'no', 'off')


def parse_value(key: str, text: str, current: Any) -> Any:
  """Parses `text` as the type of `current` (the field's present value)."""
  try:
    if isinstance(current, bool):
      low = text.lower()
      if low in _TRUE:
        return True
      if low in _FALSE:
        return False
      raise ValueError
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if current is None:  # an unset optional field: a number if it reads as one
      for cast in (int, float):
        try:
          return cast(text)
        except ValueError:
          pass
      return text
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      items = [t for t in text.replace(';', ' ').split() if t]
      proto = current[0] if current else ''
      return type(current)(parse_value(key, t, proto) for t in items)
  except ValueError:
    raise ValueError(f'config override {key}={text!r}: expected a value of type '
                     f'{type(current).__name__} (current value {current!r})') from None
  raise ValueError(f'config override {key}: fields of type {type(current).__name__} cannot be '
                   'set from the command line')


def _resolve(config: ml_collections.ConfigDict, key: str):
  parts = key.split('.')
  node = config
  for i, p in enumerate(parts[:-1]):
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise ValueError(f'unknown config key {key!r}: {".".join(parts[:i + 1])!r} is not a section')
    node = node[p]
  if parts[-1] not in node:
    raise ValueError(f'unknown config key {key!r}; fields of '
                     f'{".".join(parts[:-1]) or "the top level"}: {sorted(node.keys())}')
  return node, parts[-1]


def set_override(config: ml_collections.ConfigDict, key: str, text: str,
                 aliases: Optional[Mapping[str, str]] = None) -> None:
  path = (aliases or {}).get(key, key)
  node, leaf = _resolve(config, path)
  value = parse_value(key, text, node[leaf])
  with node.ignore_type():
    node[leaf] = value


def parse_arg(arg: Optional[str], config: ml_collections.ConfigDict,
              presets: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
              aliases: Optional[Mapping[str, str]] = None) -> ml_collections.ConfigDict:
  """Applies presets (in order) then `key=value` overrides from a `get_config` argument.

  `preset=NAME` is the bare word NAME written as a key=value pair (a sweep point, which is all
  key=value, can so apply a preset, e.g. `preset=mamba`).

  The aliases are kept in the config (`config.aliases`), so tools that reopen a run's
  config.json (evaluation, sweeps) accept the same short names."""
  config.aliases = ml_collections.ConfigDict(dict(aliases or {}))
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  overrides = []
  for t in tokens:
    k, eq, v = (part.strip() for part in t.partition('='))
    if eq and k == 'preset':
      t = v
    elif eq:
      overrides.append((k, v))
      continue
    if t in presets:
      presets[t](config)
    else:
      raise ValueError(f'unknown preset {t!r}; presets: {sorted(presets)} '
                       '(overrides are written key=value)')
  for k, v in overrides:
    set_override(config, k, v, aliases)
  return config


def section(cls, **changes) -> ml_collections.ConfigDict:
  """A config section holding a dataclass's defaults (the one place they live), with changes."""
  d = dataclass_defaults(cls)
  unknown = sorted(set(changes) - set(d))
  if unknown:
    raise ValueError(f'{unknown[0]!r} is not a field of {cls.__name__}')
  d.update(changes)
  return ml_collections.ConfigDict(d)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:presets,overrides]` -> the config its get_config builds."""
  return load_config_module(spec).get_config(spec.partition(':')[2] or None)


def load_config_module(spec: str):
  """The config file module of `path[:arg]` (its get_config and ALIASES)."""
  return load_module_file(spec.partition(':')[0], 'config', 'get_config')


def load_module_file(path: str, what: str, entry: str):
  """Imports a Python file by path (a config or sweep file); it must define `entry`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{what} file {path} not found')
  name = f'_{what}_{abs(hash(os.path.abspath(path)))}'
  if name in sys.modules:  # loaded already in this process: once is enough
    return sys.modules[name]
  mod_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(mod_spec)
  sys.modules[name] = module  # dataclasses (and pickling) look the module up by name
  try:
    mod_spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  if not hasattr(module, entry):
    raise ValueError(f'{what} file {path} defines no {entry}(arg)')
  return module


INIT_FROM_PARTS = ('', 'backbone')


def check_init_from_part(train_cfg) -> str:
  """train.init_from_part, checked: '' (all parameters) or 'backbone', the latter with init_from."""
  part = str(train_cfg.get('init_from_part', '') or '')
  if part not in INIT_FROM_PARTS:
    raise ValueError(f"train.init_from_part={part!r}: expected one of {INIT_FROM_PARTS} ('' = all "
                     "of init_from's parameters)")
  if part and not train_cfg.get('init_from', ''):
    raise ValueError(f'train.init_from_part={part!r} needs train.init_from (the run to take the '
                     f'{part} from)')
  return part


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every section; raises ValueError naming the offending field."""
  from gradmem_jax.data import task_config
  from gradmem_jax.memory import METHODS, memory_config_from
  from gradmem_jax.models import backbone_from_config, pretrained
  model = dict(config.model)
  if model.get('vocab_size', 0) < 0:
    raise ValueError(f'model.vocab_size must be >= 0 (0: from the task), got {model["vocab_size"]}')
  if not pretrained.source(model):  # else the architecture comes from the checkpoint
    if not model.get('vocab_size'):
      model['vocab_size'] = 1  # resolved from the task later
    backbone_from_config(model)
  mem = memory_config_from(config.memory)
  METHODS.get(mem.method).validate_config(mem)
  task_config(config.data)
  o = config.optim
  if o.lr <= 0:
    raise ValueError(f'optim.lr must be > 0, got {o.lr}')
  if o.batch_size < 1:
    raise ValueError(f'optim.batch_size must be >= 1, got {o.batch_size}')
  if o.micro_batch_size < -1 or (o.micro_batch_size > 0 and o.batch_size % o.micro_batch_size):
    raise ValueError(f'optim.micro_batch_size={o.micro_batch_size} must divide optim.batch_size='
                     f'{o.batch_size} (0: no micro-batching, -1: auto, cache-sized chunks on CPU)')
  if o.warmup_steps < 0 or o.clip_norm < 0 or o.weight_decay < 0:
    raise ValueError('optim.warmup_steps, optim.clip_norm and optim.weight_decay must be >= 0')
  if o.schedule not in ('constant', 'cosine'):
    raise ValueError(f"optim.schedule={o.schedule!r} is not known; allowed: ['constant', 'cosine']")
  t = config.train
  if t.max_steps < 0 or t.eval_every < 1 or t.checkpoint_every < 1:
    raise ValueError('train.max_steps must be >= 0, train.eval_every and train.checkpoint_every >= 1')
  check_init_from_part(t)
  if not 0 < t.target_em <= 1.0 + 1e-9 and t.target_em != 0:
    raise ValueError(f'train.target_em must be in (0, 1] (0: off), got {t.target_em}')
  if config.eval.batch_size < 1:
    raise ValueError(f'eval.batch_size must be >= 1, got {config.eval.batch_size}')
  m = config.mesh
  if m.data == 0 or m.data < -1 or m.fsdp < 1:
    raise ValueError('mesh.data must be -1 (all devices) or >= 1; mesh.fsdp must be >= 1')
