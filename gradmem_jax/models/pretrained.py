"""Pretrained backbones named in `config.model`: where the architecture and the weights come from.

`model.hf_checkpoint` is a local Hugging Face directory (config.json + *.safetensors). The
architecture then comes from the checkpoint; `config.model` may only set the fields that do not
change it (the compute dtype, param dtype, remat policy, and the family's own runtime fields such
as dropout rates). Any other field that differs from the checkpoint is an error naming it, never
silently dropped.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from gradmem_jax.models.base import FAMILIES, Backbone

# Fields of config.model that every family may set on top of a checkpoint's architecture.
RUNTIME_FIELDS = ('dtype', 'param_dtype', 'remat')
SOURCE_FIELDS = ('hf_checkpoint',)


def source(model: dict) -> Optional[str]:
  """The pretrained checkpoint a config.model section names, or None."""
  return model.get('hf_checkpoint') or None


def checkpoint_model_config(path: str) -> dict:
  """The architecture (our config.model dict, with 'kind') of a checkpoint directory."""
  from gradmem_jax.models import hf
  cfg_path = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'model.hf_checkpoint={path!r}: no config.json there (a Hugging Face '
                            'checkpoint directory with *.safetensors is expected)')
  with open(cfg_path) as f:
    return hf.model_config_from_hf(json.load(f))


def resolve_model_config(model: dict) -> dict:
  """config.model with the architecture of the checkpoint it names (unchanged when none)."""
  path = source(model)
  if path is None:
    return dict(model)
  arch = checkpoint_model_config(path)
  family = FAMILIES.get(arch['kind'])
  runtime = set(RUNTIME_FIELDS) | set(getattr(family.config_cls, 'RUNTIME_FIELDS', ()))
  out = dict(arch)
  for key, value in model.items():
    if key in SOURCE_FIELDS or value is None:
      continue
    if key in runtime:
      out[key] = value
    elif key == 'vocab_size' and value == 0:
      continue  # 0 means "from elsewhere": the checkpoint's
    elif key not in arch:
      raise ValueError(f'model.{key}={value!r} is not set by the {arch["kind"]} checkpoint '
                       f'{path!r}; with model.hf_checkpoint only {sorted(runtime)} may be set')
    elif _differs(value, arch[key]):
      raise ValueError(f'model.{key}={value!r} differs from the checkpoint {path!r} '
                       f'({key}={arch[key]!r}): with model.hf_checkpoint the architecture comes '
                       f'from the checkpoint; remove model.{key} (only {sorted(runtime)} may be '
                       'set)')
  out['hf_checkpoint'] = path
  return out


def _differs(ours: Any, theirs: Any) -> bool:
  if hasattr(ours, 'to_dict'):
    ours = ours.to_dict()
  if isinstance(ours, dict) and not ours:
    ours = None
  return ours != theirs


def load_params(model: dict, backbone: Backbone):
  """The backbone parameters of the checkpoint config.model names (None when it names none)."""
  path = source(model)
  if path is None:
    return None
  from gradmem_jax.models import hf
  return hf.load_hf_params(path, backbone)
