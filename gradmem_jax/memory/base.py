"""The Method interface (a Protocol) and the registry of methods by name (`memory.method`).

A method is a frozen dataclass `(backbone, cfg: MemoryConfig)`, hashable so it can be a static
argument of `jax.jit`, that registers itself with `@METHODS.register('name')` in its own module.
The runner, evaluators, reports and the notebook API use only what this protocol declares.

A batch is a dict of int32 arrays, right-padded (`BATCH_SPEC` in gradmem_jax/data/base.py):
  context [B, S], context_mask [B, S]  (1 = real token)
  qa [B, Q]                            (query + target tokens, teacher forced)
  target_mask [B, Q]                   (1 = target token carrying loss; all 0 = padding sample)
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Protocol, runtime_checkable

import jax

from gradmem_jax.memory.config import MemoryConfig
from gradmem_jax.models import Backbone
from gradmem_jax.registry import Registry

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a method can do beyond WRITE and READ (the runner and tools ask, never test names)."""
  write_loss: bool = False        # stats carry 'write_loss' [B, K]; final_write_loss() exists
  generate: bool = False          # generate() answers greedily from the written state
  k_extrapolation: bool = False   # evaluation may use another K than training
  memory: bool = True             # WRITE returns a fixed-size memory (False: keeps the context)


@runtime_checkable
class Method(Protocol):
  """What the runner needs from a WRITE/READ method."""
  backbone: Backbone
  cfg: MemoryConfig

  capabilities: ClassVar[Capabilities]

  @classmethod
  def validate_config(cls, cfg: MemoryConfig) -> None:
    """Raises ValueError naming the memory.* field this method cannot run with."""

  def init_params(self, rng: Array, backbone_params: Optional[Params] = None) -> Params:
    """{'backbone': ..., 'memory': ...}; with backbone_params only the memory part is new."""

  def write(self, params: Params, context: Array, context_mask: Array, *,
            rng: Optional[Array] = None, deterministic: bool = True,
            K: Optional[int] = None) -> tuple[dict, dict]:
    """-> (state carried to READ, per-sample statistics {name: [B, ...]})."""

  def read_logits(self, params: Params, state: dict, qa: Array, *,
                  rng: Optional[Array] = None, deterministic: bool = True) -> Array:
    """Teacher-forced logits [B, Q, V] predicting qa [B, Q]."""

  def memory_floats(self, context_len: int) -> int:
    """Floats of state carried from WRITE to READ per sample."""

  def identity(self) -> dict:
    """The method fields that name a run in results and reports (method, K, ...)."""

  def for_evaluation(self, K: Optional[int]) -> 'Method':
    """The variant that evaluates with K WRITE steps (e.g. a rolled scan for large K)."""


METHODS: Registry[type] = Registry('method', 'memory.method')


def build_method(backbone: Backbone, mem_cfg: MemoryConfig) -> Method:
  cls = METHODS.get(mem_cfg.method)
  mem_cfg.validate()
  cls.validate_config(mem_cfg)
  return cls(backbone, mem_cfg)
