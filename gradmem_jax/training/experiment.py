"""An experiment built from a config: task, backbone, method, mesh and optimizer, and the train
state's shapes and shardings. Nothing here names a task or a method: both come from registries."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gradmem_jax import config_lib
from gradmem_jax.data import Task, build_task
from gradmem_jax.memory import MemoryConfig, Method, build_method, memory_config_from
from gradmem_jax.models import Backbone, backbone_from_config, pretrained
from gradmem_jax.models.base import DEFAULT_KIND
from gradmem_jax.training import mesh as mesh_lib
from gradmem_jax.training.optim import make_optimizer

Array = jax.Array


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  task: Task
  backbone: Backbone
  mem_cfg: MemoryConfig
  method: Method
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation

  @property
  def memory_floats(self) -> int:
    """Floats of state carried from WRITE to READ per sample."""
    return self.method.memory_floats(self.task.context_len)

  def identity(self) -> dict:
    """What names this run in results and reports: the task's fields, the backbone family when
    it is not the default Llama-style decoder (a Mamba, GPT-2), and the method's fields."""
    family = {} if self.backbone.kind == DEFAULT_KIND else {'backbone': self.backbone.kind}
    return {**self.task.identity(), **family, **self.method.identity()}


def _data_section(config) -> dict:
  """config.data, with data.tokenizer='model' resolved to the pretrained checkpoint's tokenizer."""
  data = config.data.to_dict()
  if data.get('tokenizer') == 'model':
    src = pretrained.source(config.model.to_dict())
    if not src:
      raise ValueError("data.tokenizer='model' needs model.hf_checkpoint or model.pretrained (a "
                       "pretrained name such as 'smollm2-135m', a .gguf file, or a local Hugging "
                       'Face checkpoint directory with its tokenizer files)')
    data['tokenizer'] = src
  return data


def build_experiment(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  config_lib.validate_config(config)
  task = build_task(_data_section(config))
  model = pretrained.resolve_model_config(config.model.to_dict())
  if not model['vocab_size']:
    model['vocab_size'] = task.vocab_size
  elif model['vocab_size'] < task.vocab_size:
    raise ValueError(f'model.vocab_size={model["vocab_size"]} is smaller than the task vocabulary '
                     f'({task.vocab_size})')
  backbone = backbone_from_config(model)
  mem_cfg = memory_config_from(config.memory)
  method = build_method(backbone, mem_cfg)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  n_dev = mesh.size
  o = config.optim
  if o.batch_size % n_dev:
    raise ValueError(f'optim.batch_size={o.batch_size} must be divisible by the {n_dev} devices')
  if o.micro_batch_size == -1:  # auto: cache-sized chunks on CPU, the whole batch elsewhere
    config = ml_collections.ConfigDict(config.to_dict())
    seq = getattr(task, 'context_len', 0) + mem_cfg.num_memory
    config.optim.micro_batch_size = auto_micro_batch(
        o.batch_size, n_dev, mesh.devices.flat[0].platform, seq)
    o = config.optim
  if o.micro_batch_size and o.micro_batch_size % n_dev:
    raise ValueError(f'optim.micro_batch_size={o.micro_batch_size} must be divisible by the '
                     f'{n_dev} devices')
  if config.eval.batch_size % n_dev:
    raise ValueError(f'eval.batch_size={config.eval.batch_size} must be divisible by the {n_dev} '
                     'devices')
  optimizer = make_optimizer(config.optim, config.train.max_steps,
                             freeze_backbone=mem_cfg.freeze_backbone)
  return Experiment(config, task, backbone, mem_cfg, method, mesh, optimizer)


# The CPU chunk: at most this many WRITE tokens (memory + context) per device and at most this
# many samples. Measured on 2 cores (WORKSPACE.md, performance log): 8 samples of 121 tokens (16
# pairs) and 2 samples of 465 tokens (64 pairs) are the fastest chunks; 8 of 465 run 1.27x slower.
CPU_CHUNK_TOKENS = 1024
CPU_CHUNK_SAMPLES = 8


def auto_micro_batch(batch_size: int, n_dev: int, platform: str, seq_len: int) -> int:
  """`optim.micro_batch_size=-1` resolved: 0 (whole batch) on accelerators. On CPU a second-order
  step over a whole batch overflows the caches, so the batch is cut into chunks of the largest
  per-device sample count that divides the per-device batch and keeps a chunk within
  CPU_CHUNK_TOKENS WRITE tokens (seq_len each) and CPU_CHUNK_SAMPLES samples."""
  if platform != 'cpu':
    return 0
  per_dev = batch_size // n_dev
  cap = max(1, min(CPU_CHUNK_SAMPLES, CPU_CHUNK_TOKENS // max(seq_len, 1)))
  micro = max(d for d in range(1, min(cap, per_dev) + 1) if per_dev % d == 0)
  return 0 if micro >= per_dev else micro * n_dev


def init_state(exp: Experiment, rng: Array) -> dict:
  return state_from_params(exp, exp.method.init_params(rng))


def state_from_params(exp: Experiment, params: Any) -> dict:
  """A fresh train state (step 0, fresh optimizer) around given parameters."""
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'opt_state': exp.optimizer.init(params)}


def abstract_state(exp: Experiment) -> tuple[Any, Any]:
  """(ShapeDtypeStructs with shardings, shardings) of the train state."""
  shapes = jax.eval_shape(functools.partial(init_state, exp), jax.random.PRNGKey(0))
  shardings = mesh_lib.state_shardings(exp.mesh, shapes)
  abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return abstract, shardings


def pretrained_params(exp: Experiment, rng: Array):
  """Params with the backbone from the pretrained checkpoint config.model names (memory
  parameters, e.g. the write head, initialised from it), or None when it names none."""
  backbone_params = pretrained.load_params(exp.config.model.to_dict(), exp.backbone)
  if backbone_params is None:
    return None
  return exp.method.init_params(rng, backbone_params=backbone_params)
