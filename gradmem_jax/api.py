"""A small notebook-level API: build or load a model, write contexts, answer queries from memory.

  from gradmem_jax.api import GradMemModel
  model = GradMemModel.from_workdir('/tmp/kv_run')
  # or a fresh model from a config file spec: GradMemModel.from_config('configs/<task>.py:tiny')
  mem = model.write('!ab:cd!!ef:gh!|')                      # K gradient steps on the memory
  model.answer(mem, ['?!ab:', '?!ef:'])                     # -> ['cd!|', 'gh!|']
  mem.stats['write_loss']                                   # WRITE loss per inner step

The context is not kept: `answer` sees only the memory.

A pretrained language model with its own tokenizer (memory parameters freshly initialised, the
write head copied from its output embedding; not meta-trained, so answers are the base model's):

  model = GradMemModel.from_pretrained('smollm2-135m', num_memory=8, K=5, inner_lr=1.0)
  mem = model.write('Anna lives in Paris. ...')
  model.answer(mem, ['Question: Where does Anna live?\nAnswer:'])
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gradmem_jax import config_lib
from gradmem_jax.data import Sample, collate
from gradmem_jax.memory import MemoryConfig, build_method, memory_config_from
from gradmem_jax.models import backbone_from_config, pretrained
from gradmem_jax.registry import dataclass_defaults
from gradmem_jax.training.checkpoint import load_params
from gradmem_jax.training.evaluate import load_run_config
from gradmem_jax.training.experiment import Experiment, abstract_state, build_experiment


@dataclasses.dataclass
class Memory:
  state: dict    # {'memory': [B, m, d], ...} as returned by the method's write
  stats: dict    # numpy inner-loop statistics per context
  n_contexts: int


@dataclasses.dataclass
class _TextTask:
  """What GradMemModel needs of a task when there is none (from_pretrained): a tokenizer whose EOS
  ends every answer."""
  tokenizer: object
  max_new_tokens: int = 32

  @property
  def pad_id(self) -> int:
    return int(self.tokenizer.pad_id)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (int(self.tokenizer.eos_id),)


class GradMemModel:

  def __init__(self, exp: Experiment, params):
    self.exp = exp
    self.params = params
    self.tokenizer = exp.task.tokenizer
    method = exp.method
    self._write = jax.jit(lambda p, c, m, K: method.write(p, c, m, K=K), static_argnums=3)
    self._generate = jax.jit(
        lambda p, s, q, ql, n: method.generate(p, s, q, ql, max_new_tokens=n,
                                               stop_ids=exp.task.stop_ids, pad_id=exp.task.pad_id),
        static_argnums=4)
    self._read = jax.jit(lambda p, s, qa: method.read_logits(p, s, qa))

  @classmethod
  def from_config(cls, config: Union[str, ml_collections.ConfigDict],
                  seed: int = 0) -> 'GradMemModel':
    """A freshly initialised model from a config: a ConfigDict, or a config file spec
    `path/to/config.py[:presets,overrides]`."""
    if isinstance(config, str):
      config = config_lib.load_config(config)
    exp = build_experiment(config)
    return cls(exp, exp.method.init_params(jax.random.PRNGKey(seed)))

  @classmethod
  def from_pretrained(cls, name_or_path: str, *, seed: int = 0, max_new_tokens: int = 32,
                      **overrides) -> 'GradMemModel':
    """A ready model on a pretrained backbone: `name_or_path` is a name ('smollm2-135m'), a .gguf
    file or a local Hugging Face directory; its own tokenizer is used. `overrides` are
    `config.memory` fields (num_memory, K, inner_lr, lora_rank, ...; MemoryConfig's defaults
    otherwise) and the model's runtime fields (dtype, param_dtype, remat; each family's own, e.g.
    Llama's attn_q_block and scan_layers, Mamba's scan_impl). The memory parameters
    are freshly initialised from the backbone (not meta-trained)."""
    mem_fields = set(dataclass_defaults(MemoryConfig))
    runtime_fields = pretrained.runtime_fields()
    runtime = {k: v for k, v in overrides.items() if k in runtime_fields}
    unknown = sorted(set(overrides) - mem_fields - set(runtime))
    if unknown:
      raise ValueError(f'from_pretrained({unknown[0]}=...): not a memory field nor a runtime model '
                       f'field; allowed: {sorted(mem_fields | set(runtime_fields))}')
    model = pretrained.resolve_model_config(dict(pretrained=os.fspath(name_or_path), **runtime))
    backbone = backbone_from_config(model)
    memory = dict(dataclass_defaults(MemoryConfig))
    memory.update({k: v for k, v in overrides.items() if k in mem_fields})
    mem_cfg = memory_config_from(memory)
    method = build_method(backbone, mem_cfg)
    task = _TextTask(pretrained.tokenizer(model['pretrained']), max_new_tokens)
    if task.tokenizer.vocab_size > backbone.vocab_size:
      raise ValueError(f'the tokenizer of {name_or_path!r} has {task.tokenizer.vocab_size} ids, '
                       f'the model {backbone.vocab_size}')
    config = ml_collections.ConfigDict({'model': model, 'memory': memory})
    params = method.init_params(jax.random.PRNGKey(seed),
                                backbone_params=pretrained.load_params(model, backbone))
    exp = Experiment(config, task, backbone, mem_cfg, method, mesh=None, optimizer=None)
    return cls(exp, params)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: Optional[str] = None) -> 'GradMemModel':
    """A trained model: the run's config and its best (else latest) parameters."""
    exp = build_experiment(load_run_config(workdir))
    abstract, _ = abstract_state(exp)
    params, _ = load_params(checkpoint or workdir, abstract['params'])
    return cls(exp, params)

  def _ids(self, text: Union[str, Sequence[int]]) -> np.ndarray:
    ids = self.tokenizer.encode(text) if isinstance(text, str) else np.asarray(text, np.int32)
    vocab = self.exp.backbone.vocab_size
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
      bad = int(ids[(ids < 0) | (ids >= vocab)][0])
      raise ValueError(f'token id {bad} is outside the model vocabulary [0, {vocab})')
    return ids

  def write(self, contexts: Union[str, Sequence[str]], K: Optional[int] = None) -> Memory:
    """WRITE one context or a list of contexts into memory (K steps; default: the trained K)."""
    if not self.exp.method.capabilities.memory:
      raise ValueError(f'memory.method={self.exp.mem_cfg.method!r} keeps the context itself: it '
                       'has no memory to write')
    contexts = [contexts] if isinstance(contexts, (str, np.ndarray)) else list(contexts)
    samples = [Sample(self._ids(c), np.zeros(1, np.int32), np.zeros(0, np.int32))
               for c in contexts]
    batch = collate(samples, self.exp.task.pad_id)
    K = self.exp.mem_cfg.K if K is None else int(K)
    state, stats = self._write(self.params, jnp.asarray(batch['context']),
                               jnp.asarray(batch['context_mask']), K)
    return Memory(state, jax.tree_util.tree_map(np.asarray, stats), len(contexts))

  def _tile(self, memory: Memory, index: int, n: int) -> dict:
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x[index:index + 1], n, axis=0), memory.state)

  def answer(self, memory: Memory, queries: Sequence[str], context_index: int = 0,
             max_new_tokens: Optional[int] = None) -> list[str]:
    """Greedy answers to several queries from one written context's memory."""
    ids = [self._ids(q) for q in queries]
    n = len(ids)
    plen = max(len(i) for i in ids)
    prompt = np.zeros((n, plen), np.int32)
    for j, i in enumerate(ids):
      prompt[j, :len(i)] = i
    max_new = max_new_tokens or self.exp.task.max_new_tokens
    out = self._generate(self.params, self._tile(memory, context_index, n), jnp.asarray(prompt),
                         jnp.asarray([len(i) for i in ids], jnp.int32), int(max_new))
    return [self.tokenizer.decode(row) for row in np.asarray(out)]

  def score(self, memory: Memory, query: str, target: str, context_index: int = 0) -> dict:
    """Teacher-forced log-probability of `target` after `query`, and whether argmax gets it."""
    q, t = self._ids(query), self._ids(target)
    qa = jnp.asarray(np.concatenate([q, t])[None])
    logits = self._read(self.params, self._tile(memory, context_index, 1), qa)[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    pos = np.arange(len(q), len(q) + len(t))
    lp = float(np.asarray(logp)[pos, t].sum())
    exact = bool(np.all(np.asarray(jnp.argmax(logits, -1))[pos] == t))
    return {'logprob': lp, 'exact': exact}
