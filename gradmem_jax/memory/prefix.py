"""What the prefix-memory methods (GradMem, RMT) share: memory parameters, projection, READ and
greedy generation from memory.

READ input: [read_start; P(M); read_end; qa] (c control tokens per slot, offset = m + 2c).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gradmem_jax.memory import ops
from gradmem_jax.memory.config import MemoryConfig
from gradmem_jax.models import Backbone

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class PrefixMemory:
  """What GradMem and the RMT baseline share: memory parameters, projection, READ."""
  backbone: Backbone
  cfg: MemoryConfig

  # ------------------------------------------------------------------------------------------
  # Parameters.

  def init_memory_params(self, rng: Array, backbone_params: Params) -> dict:
    cfg, d = self.cfg, self.backbone.hidden_size
    k_mem, k_ctrl = jax.random.split(rng)
    p: dict[str, Any] = {
        'mem_init': cfg.init_std * jax.random.normal(k_mem, (cfg.num_memory, d), jnp.float32)}
    if cfg.mem_proj != 'none':
      p['mem_proj'] = {'kernel': jnp.eye(d, dtype=jnp.float32), 'bias': jnp.zeros((d,), jnp.float32)}
    if cfg.num_ctrl:
      names = ('write_start', 'write_end', 'read_start', 'read_end')
      keys = jax.random.split(k_ctrl, len(names))
      p['ctrl'] = {n: cfg.init_std * jax.random.normal(k, (cfg.num_ctrl, d), jnp.float32)
                   for n, k in zip(names, keys)}
    return p

  def init_params(self, rng: Array, backbone_params: Optional[Params] = None) -> Params:
    """Fresh parameters; with `backbone_params` (e.g. a pretrained checkpoint) only the memory
    parameters are initialised, from them (the write head copies their output embedding)."""
    k_bb, k_mem = jax.random.split(rng)
    bb = self.backbone.init(k_bb) if backbone_params is None else backbone_params
    return {'backbone': bb, 'memory': self.init_memory_params(k_mem, bb)}

  def base_backbone(self, params: Params) -> Params:
    """The backbone parameters as READ uses them: behind a stop_gradient when
    memory.freeze_backbone (the outer loss then computes no backbone gradient at all)."""
    bb = params['backbone']
    return jax.lax.stop_gradient(bb) if self.cfg.freeze_backbone else bb

  # ------------------------------------------------------------------------------------------
  # Building inputs.

  def project(self, params: Params, proj: Optional[dict], memory: Array) -> Array:
    """P(M) = M W + b. memory [B, m, d]; proj per-sample ([B, d, d]) or shared ([d, d])."""
    if self.cfg.mem_proj == 'none':
      return memory
    w, b = proj['kernel'], proj['bias']
    if w.ndim == 3:
      return jnp.einsum('bmd,bde->bme', memory, w) + b[:, None, :]
    return memory @ w + b

  def _ctrl(self, params: Params, name: str, batch: int) -> list[Array]:
    if not self.cfg.num_ctrl:
      return []
    c = params['memory']['ctrl'][name]
    return [jnp.broadcast_to(c, (batch,) + c.shape)]

  def prefixed(self, params: Params, start: str, end: str, mem: Array, tail: Array) -> Array:
    """[start; mem; end; tail] along the time axis. mem [B, m, d], tail [B, T, d]."""
    b = mem.shape[0]
    parts = self._ctrl(params, start, b) + [mem] + self._ctrl(params, end, b) + [tail]
    return jnp.concatenate([x.astype(tail.dtype) for x in parts], axis=1)

  def read_proj(self, params: Params, state: dict) -> Optional[dict]:
    if self.cfg.mem_proj == 'per_sample':
      return state['proj']
    return params['memory'].get('mem_proj')

  # ------------------------------------------------------------------------------------------
  # READ.

  def read_logits(self, params: Params, state: dict, qa: Array, *,
                  rng: Optional[Array] = None, deterministic: bool = True) -> Array:
    """Teacher-forced logits [B, Q, V] predicting qa [B, Q] from [read_start; P(M); read_end; qa].

    The position before each qa token predicts it (the last memory/control position predicts
    qa[0]); qa's last token is not fed, since nothing is predicted from it. READ always runs the
    base backbone (write-only LoRA adapts WRITE alone).
    """
    bb = self.base_backbone(params)
    mem = self.project(params, self.read_proj(params, state), state['memory'])
    tail = self.backbone.embed(bb, qa[:, :-1])
    x = self.prefixed(params, 'read_start', 'read_end', mem, tail)
    h = self.backbone.hidden(bb, x, jnp.arange(x.shape[1]), deterministic=deterministic, rng=rng)
    h = h[:, self.cfg.offset - 1:]
    return self.backbone.logits(bb, h)

  def generate(self, params: Params, state: dict, prompt: Array, prompt_len: Array, *,
               max_new_tokens: int, stop_ids: tuple[int, ...] = (), pad_id: int = 0) -> Array:
    """Greedy generation from memory. prompt [B, P] right-padded, prompt_len [B].

    Returns [B, max_new_tokens] generated ids; after a stop id (kept) the rest is pad_id
    (ops.greedy_generate).
    """
    bb = self.base_backbone(params)
    mem = self.project(params, self.read_proj(params, state), state['memory'])
    rows = jnp.arange(prompt.shape[0])

    def next_logits(buf, t):
      x = self.prefixed(params, 'read_start', 'read_end', mem, self.backbone.embed(bb, buf))
      h = self.backbone.hidden(bb, x, jnp.arange(x.shape[1]))
      return self.backbone.logits(bb, h[rows, self.cfg.offset + t - 1])  # predicts token t

    return ops.greedy_generate(next_logits, prompt, prompt_len, max_new_tokens=max_new_tokens,
                               stop_ids=stop_ids, pad_id=pad_id)

  # ------------------------------------------------------------------------------------------
  # What the runner asks of every method.

  def memory_floats(self, context_len: int) -> int:
    return self.cfg.num_memory * self.backbone.hidden_size

  def for_evaluation(self, K: Optional[int]) -> 'PrefixMemory':
    return self
