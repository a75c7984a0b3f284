"""Plug-ins: a toy task and a toy method defined here, registered here, and run through every
tool (train_and_evaluate, evaluation with several K, compare, whose points run as a sweep's do,
the notebook API) without any change to the library.

This file is also the config file of those runs (`--config=tests/test_plugins.py:...`): the
compare tool (and a sweep) launches fresh processes, which load it, and importing it registers the
plug-ins there too (registrations use replace=True, since pytest and the config loader import it
under two module names).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from gradmem_jax import config_lib
from gradmem_jax.data import TASKS, HostBatches, Sample, collate
from gradmem_jax.data.base import exact_text_match
from gradmem_jax.memory import METHODS, Capabilities, MemoryConfig, Method
from gradmem_jax.models import Backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)


# ------------------------------------------------------------------------------------------------
# A toy task: remember the first digit of a string of digits.


@dataclasses.dataclass(frozen=True)
class FirstDigitConfig:
  length: int = 5          # digits per context
  n_val: int = 16          # validation samples
  seed: int = 0            # training stream

  def validate(self) -> None:
    if self.length < 1:
      raise ValueError(f'data.length must be >= 1, got {self.length}')


class DigitTokenizer:
  """ids 0 pad, 1 '?', 2..11 the digits."""
  vocab_size, pad_id = 12, 0

  def encode(self, text: str) -> np.ndarray:
    return np.array([1 if c == '?' else int(c) + 2 for c in text], np.int32)

  def decode(self, ids) -> str:
    return ''.join('?' if i == 1 else str(i - 2) for i in np.asarray(ids).tolist() if i > 0)


class FirstDigitTask(HostBatches):
  config_cls: ClassVar[type] = FirstDigitConfig

  def __init__(self, cfg: FirstDigitConfig):
    self.cfg = cfg
    self.tokenizer = DigitTokenizer()
    self.vocab_size, self.pad_id = self.tokenizer.vocab_size, 0
    self.ignore_ids, self.stop_ids = (), (0,)
    self.context_len, self.max_new_tokens = cfg.length, 1
    self.summary = f'first digit of {cfg.length} digits'
    self._val = [self._sample(np.random.default_rng([99, i])) for i in range(cfg.n_val)]

  def _sample(self, rng) -> Sample:
    digits = rng.integers(2, 12, self.cfg.length).astype(np.int32)
    return Sample(digits, np.array([1], np.int32), digits[:1])

  def identity(self) -> dict:
    return {'task': 'first_digit', 'length': self.cfg.length}

  def validation_set(self):
    return self._val

  def train_sample(self, index: int) -> Sample:
    return self._sample(np.random.default_rng([self.cfg.seed, index]))

  def collate(self, samples, batch_size: Optional[int] = None) -> dict:
    return collate(samples, self.pad_id, batch_size=batch_size, context_len=self.cfg.length,
                   qa_len=2)

  def score_prediction(self, sample, prediction: str) -> dict:
    return exact_text_match(prediction, self.tokenizer.decode(sample.target))


# ------------------------------------------------------------------------------------------------
# A toy method: the memory is the mean context embedding, refined K times by a learned map.


@dataclasses.dataclass(frozen=True)
class MeanWriter:
  backbone: Backbone
  cfg: MemoryConfig
  capabilities: ClassVar[Capabilities] = Capabilities(k_extrapolation=True)

  @classmethod
  def validate_config(cls, cfg: MemoryConfig) -> None:
    if cfg.K < 1:
      raise ValueError(f'memory.K must be >= 1 for method=mean_writer, got {cfg.K}')

  def init_params(self, rng, backbone_params=None):
    d = self.backbone.hidden_size
    bb = self.backbone.init(rng) if backbone_params is None else backbone_params
    return {'backbone': bb, 'memory': {'mix': jnp.zeros((d, d), jnp.float32)}}

  def write(self, params, context, context_mask, *, rng=None, deterministic=True, K=None):
    emb = self.backbone.embed(params['backbone'], context)                  # [B, S, d]
    w = context_mask[..., None].astype(emb.dtype)
    mem = jnp.sum(emb * w, axis=1, keepdims=True) / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1)
    for _ in range(self.cfg.K if K is None else K):
      mem = mem + jnp.tanh(mem @ params['memory']['mix'])
    return {'memory': mem}, {'mem_norm': jnp.linalg.norm(mem[:, 0], axis=-1)}

  def read_logits(self, params, state, qa, *, rng=None, deterministic=True):
    bb = params['backbone']
    x = jnp.concatenate([state['memory'], self.backbone.embed(bb, qa[:, :-1])], axis=1)
    h = self.backbone.hidden(bb, x, jnp.arange(x.shape[1]))
    return self.backbone.logits(bb, h)

  def memory_floats(self, context_len: int) -> int:
    return self.backbone.hidden_size

  def identity(self) -> dict:
    return {'method': 'mean_writer', 'K': self.cfg.K}

  def for_evaluation(self, K):
    return self


TASKS.register('first_digit', FirstDigitTask, replace=True)
METHODS.register('mean_writer', MeanWriter, replace=True)


# ------------------------------------------------------------------------------------------------
# This file as a config file.

COMPARE = ('mean_writer', 'gradmem:K=1')


def get_config(arg=None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = common.model_section('llama', vocab_size=0, hidden_size=16, intermediate_size=32,
                                 num_layers=1, num_heads=2, num_kv_heads=2)
  c.memory = config_lib.section(MemoryConfig, method='mean_writer', num_memory=2, K=1)
  c.data = common.task_section('first_digit')
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0, warmup_steps=1,
      schedule='constant', batch_size=8, micro_batch_size=0))
  c.train = ml_collections.ConfigDict(dict(
      max_steps=4, eval_every=2, checkpoint_every=2, keep_checkpoints=2, target_em=0.0,
      init_from='', log_every_s=0.0, max_minutes=0.0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, K=-1, evaluators=('teacher_forced',)))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.distributed = False
  config = config_lib.parse_arg(arg, c, {}, {'K': 'memory.K', 'method': 'memory.method',
                                             'steps': 'train.max_steps'})
  config_lib.validate_config(config)
  return config


# ------------------------------------------------------------------------------------------------
# Tests.


def _run(args, timeout=600):
  out = subprocess.run([sys.executable, '-m'] + args, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_toy_plugins_satisfy_the_protocols():
  from gradmem_jax.training import build_experiment
  exp = build_experiment(get_config())
  assert isinstance(exp.task, FirstDigitTask) and isinstance(exp.method, MeanWriter)
  assert isinstance(exp.method, Method)
  assert exp.identity() == {'task': 'first_digit', 'length': 5, 'method': 'mean_writer', 'K': 1}


def test_toy_plugins_train_evaluate_and_api(tmp_path):
  from gradmem_jax.api import GradMemModel
  from gradmem_jax.training import train_and_evaluate
  from gradmem_jax.training.evaluate import evaluate_run
  results = train_and_evaluate(get_config(), str(tmp_path))
  assert results['steps'] == 4 and results['task'] == 'first_digit'
  assert results['identity_fields'] == ['task', 'length', 'method', 'K']
  assert results['memory_floats'] == 16 and results['write_flops_per_sample'] is not None
  rows = evaluate_run(str(tmp_path), [1, 3])  # K extrapolation of the toy method
  assert [r['K_eval'] for r in rows] == [1, 3] and all(0 <= r['em'] <= 1 for r in rows)
  model = GradMemModel.from_workdir(str(tmp_path))
  mem = model.write(['12345', '67890'])
  assert mem.state['memory'].shape == (2, 1, 16)
  s = model.score(mem, '?', '1')
  assert set(s) == {'logprob', 'exact'}


def test_toy_plugins_compare(tmp_path):
  # compare runs each method as a sweep point, in a fresh process that loads this file by its
  # --config path and finds the plugins there (experiments.sweep launches points the same way:
  # sweeps.run_sweep).
  out = _run(['experiments.compare', f'--config={THIS}', f'--workdir={tmp_path / "cmp"}'])
  assert 'mean_writer' in out and 'gradmem' in out and 'first digit' in out
  assert (tmp_path / 'cmp' / 'compare.md').exists()
  assert (tmp_path / 'cmp' / 'em_by_method.png').stat().st_size > 0
  r = json.load(open(tmp_path / 'cmp' / 'method=mean_writer' / 'results.json'))
  assert (r['task'], r['method'], r['steps']) == ('first_digit', 'mean_writer', 4)


def test_unknown_plugin_names_are_refused():
  with pytest.raises(ValueError, match=r"memory.method='nope' is not a known method"):
    get_config('method=nope')
  c = get_config()
  c.data.task = 'nope'
  with pytest.raises(ValueError, match=r"data.task='nope' is not a known task; allowed: .*first_digit"):
    config_lib.validate_config(c)


def test_rmt_refuses_a_per_sample_projection():
  from configs import kv_retrieval
  with pytest.raises(ValueError, match=r"memory.mem_proj='per_sample'.*method=rmt"):
    kv_retrieval.get_config('rmt,memory.mem_proj=per_sample')


def test_pretrained_architecture_fields_are_never_dropped_silently(tmp_path):
  from gradmem_jax.models import pretrained
  cfg = {'model_type': 'gpt2', 'n_embd': 32, 'n_layer': 2, 'n_head': 4, 'n_positions': 64,
         'vocab_size': 50}
  (tmp_path / 'config.json').write_text(json.dumps(cfg))
  base = {'kind': 'gpt2', 'hf_checkpoint': str(tmp_path)}
  out = pretrained.resolve_model_config(dict(base, dtype='bfloat16', attn_dropout=0.0,
                                             vocab_size=0, hidden_size=32))
  assert (out['hidden_size'], out['dtype'], out['attn_dropout']) == (32, 'bfloat16', 0.0)
  with pytest.raises(ValueError, match=r'model.hidden_size=64 differs from the checkpoint'):
    pretrained.resolve_model_config(dict(base, hidden_size=64))
  with pytest.raises(ValueError, match=r'model.rope_theta=.* is not set by the gpt2 checkpoint'):
    pretrained.resolve_model_config(dict(base, rope_theta=5.0))
