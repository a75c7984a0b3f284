"""GradMem: WRITE a context into memory by K gradient steps, READ answers from the memory alone.

All functions are pure functions of parameter pytrees. The class only carries static configuration
(it is a frozen dataclass, hashable, so it can be a static argument of `jax.jit`).

Shapes: B batch, m memory vectors, d width, S context length, Q query+target length, V vocab,
c control tokens per slot, offset = m + 2c.

Parameters (one pytree, all trained by the outer loop):
  {'backbone': decoder params,
   'memory': {'mem_init': [m, d],
              'write_head': [d, V]                    (memory.write_head),
              'mem_proj': {'kernel': [d, d], 'bias': [d]}   (memory.mem_proj != none),
              'ctrl': {'write_start', 'write_end', 'read_start', 'read_end': [c, d]} (c > 0),
              'inner_lr': [] or [K] log step sizes     (memory.learn_inner_lr != none),
              'lora': {module path: {'a': [in, r], 'b': [r, out]}}  (memory.lora_rank > 0)}}

Write-only LoRA: WRITE runs the backbone with W + (alpha/r) A@B merged into each target kernel,
once per WRITE (outside the K-step scan); READ runs the base backbone. With
memory.freeze_backbone the backbone parameters sit behind a stop_gradient in WRITE and READ.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradmem_jax.memory import losses, ops
from gradmem_jax.memory.base import METHODS, Capabilities
from gradmem_jax.memory.config import MemoryConfig
from gradmem_jax.memory.prefix import PrefixMemory
from gradmem_jax.models import common, lora

Array = jax.Array
Params = Any

_sg = jax.lax.stop_gradient


# Evaluation keeps no graph: above this many WRITE steps it runs a rolled scan, which compiles in
# constant time (an unrolled one grows with K).
EVAL_UNROLL_MAX_K = 8


@METHODS.register('gradmem')
@dataclasses.dataclass(frozen=True)
class GradMem(PrefixMemory):
  """WRITE = K steps of gradient descent on the reconstruction loss w.r.t. the memory."""
  capabilities: ClassVar[Capabilities] = Capabilities(write_loss=True, generate=True,
                                                      k_extrapolation=True)

  @classmethod
  def validate_config(cls, cfg: MemoryConfig) -> None:
    if cfg.num_memory < 1:
      raise ValueError(f'memory.num_memory must be >= 1 for method=gradmem, got {cfg.num_memory}')

  def identity(self) -> dict:
    c = self.cfg
    out = {'method': c.method, 'K': c.K, 'grad_mode': c.grad_mode, 'num_memory': c.num_memory,
           'inner_lr': c.inner_lr, 'inner_optimizer': c.inner_optimizer}
    if c.lora_rank:  # only when on: the identities of existing runs are unchanged
      out['lora_rank'] = c.lora_rank
    if c.freeze_backbone:
      out['freeze_backbone'] = True
    return out

  def for_evaluation(self, K: Optional[int]) -> 'GradMem':
    k = self.cfg.K if K is None else K
    if k > EVAL_UNROLL_MAX_K and self.cfg.unroll_inner:
      return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, unroll_inner=False))
    return self

  def init_memory_params(self, rng: Array, backbone_params: Params) -> dict:
    p = super().init_memory_params(rng, backbone_params)
    cfg = self.cfg
    if cfg.write_head:
      p['write_head'] = jnp.asarray(self.backbone.output_embedding(backbone_params), jnp.float32)
    if cfg.learn_inner_lr != 'none':
      shape = () if cfg.learn_inner_lr == 'scalar' else (max(cfg.K, 1),)
      p['inner_lr'] = jnp.full(shape, np.log(cfg.inner_lr), jnp.float32)
    if cfg.lora_rank:
      p['lora'] = lora.init(jax.random.fold_in(rng, 7), backbone_params, cfg.lora_rank,
                            cfg.lora_targets)
    return p

  def write_params(self, params: Params) -> Params:
    """`params` with the backbone WRITE runs: the base one, behind a stop_gradient when frozen,
    with the LoRA factors merged when memory.lora_rank > 0. Unchanged (the same object) when
    neither is on."""
    cfg = self.cfg
    if not cfg.lora_rank and not cfg.freeze_backbone:
      return params
    bb = self.base_backbone(params)
    if cfg.lora_rank:
      bb = lora.merge(bb, params['memory']['lora'], cfg.lora_scale)
    return {**params, 'backbone': bb}

  # ------------------------------------------------------------------------------------------
  # WRITE loss.

  def write_loss(self, params: Params, fast: dict, ctx_embeds: Array, context: Array,
                 context_mask: Array, *, rng: Optional[Array] = None,
                 deterministic: bool = True) -> Array:
    """Per-sample reconstruction loss [B] of the context from [write_start; P(M); write_end; C].

    `params` are WRITE's (`write_params`: LoRA merged, a frozen backbone stopped).
    ctx_embeds [B, S-1, d] are the embeddings of context[:, :-1] (the last token is only a
    label). Position offset-1+t predicts context token t; mean over each sample's real tokens.
    """
    bb = params['backbone']
    proj = fast['proj'] if self.cfg.mem_proj == 'per_sample' else params['memory'].get('mem_proj')
    mem = self.project(params, proj, fast['memory'])
    x = self.prefixed(params, 'write_start', 'write_end', mem, ctx_embeds)
    h = self.backbone.hidden(bb, x, jnp.arange(x.shape[1]), deterministic=deterministic, rng=rng)
    h = h[:, self.cfg.offset - 1:]
    if self.cfg.write_head:
      logits = h @ params['memory']['write_head'].astype(h.dtype)
    else:
      logits = self.backbone.logits(bb, h)
    ce = losses.token_ce(logits, context)
    return losses.masked_mean_per_sample(ce, context_mask)

  # ------------------------------------------------------------------------------------------
  # Inner loop.

  def inner_lrs(self, params: Params, K: int) -> Array:
    """Step sizes [K] (positive)."""
    cfg = self.cfg
    if cfg.learn_inner_lr == 'none':
      return jnp.full((K,), cfg.inner_lr, jnp.float32)
    raw = params['memory']['inner_lr']
    if raw.ndim == 0:
      return jnp.full((K,), jnp.exp(raw))
    idx = np.minimum(np.arange(K), raw.shape[0] - 1)  # K_eval > K_train reuses the last size
    return jnp.exp(raw[idx])

  def init_fast(self, params: Params, batch: int) -> dict:
    """The inner-loop variables of each sample at step 0: memory [B, m, d] (+ per-sample proj)."""
    mp = params['memory']
    fast = {'memory': jnp.broadcast_to(mp['mem_init'], (batch,) + mp['mem_init'].shape)}
    if self.cfg.mem_proj == 'per_sample':
      fast['proj'] = jax.tree_util.tree_map(
          lambda x: jnp.broadcast_to(x, (batch,) + x.shape), mp['mem_proj'])
    return fast

  def inner_step(self, params: Params, ctx_embeds: Array, context: Array, context_mask: Array,
                  rng: Optional[Array], deterministic: bool, mode: str, carry, xs,
                  loss_grad: bool = True):
    """One inner step (the body of WRITE's scan; public so that a caller can walk the WRITE one
    step at a time, e.g. to read the memory after every K of one trajectory).

    `params` are WRITE's (`write_params`), ctx_embeds the embeddings of context[:, :-1]; mode is
    'second', 'first' or 'none' (see `MemoryConfig.grad_mode`). carry = (fast, adam_state) with
    adam_state () for SGD; xs = (step index k, step size lr). Returns (carry, (loss [B], grad
    norm [B])) with the loss at the memory before the step.

    In modes 'first' and 'none' the step's gradient is a constant of the outer loss. Without
    loss_grad it is computed from stopped inputs, so no outer tangent enters the step and its
    loss is a statistic: the WRITE's earlier steps. (Computed from the live inputs and cut
    afterwards, XLA kept much of that dead work: the K=5 first-order KV training step did 384
    instead of 237 GFLOP.) With loss_grad (the WRITE's last step, whose loss the objective
    weighs by memory.inner_loss_weight) it is computed from the live inputs and cut afterwards:
    the loss keeps its outer gradient from the same forward."""
    cfg = self.cfg
    fast, opt = carry
    k, lr = xs
    step_rng = None if rng is None else jax.random.fold_in(rng, k)

    def total_loss_at(p, emb):
      def total_loss(f):
        per_sample = self.write_loss(p, f, emb, context, context_mask, rng=step_rng,
                                     deterministic=deterministic)
        return jnp.sum(per_sample), per_sample  # sum: each sample's gradient is its own
      return total_loss

    if mode == 'second' or loss_grad:
      (_, loss), grad = jax.value_and_grad(total_loss_at(params, ctx_embeds), has_aux=True)(fast)
    else:
      (_, loss), grad = jax.value_and_grad(total_loss_at(_sg(params), _sg(ctx_embeds)),
                                           has_aux=True)(_sg(fast))
    gnorm = ops.safe_sqrt(ops.tree_sq_norm_per_sample(grad))
    if mode != 'second':
      grad = _sg(grad)
    if cfg.clip_value > 0:
      grad = jax.tree_util.tree_map(lambda g: jnp.clip(g, -cfg.clip_value, cfg.clip_value), grad)
    if cfg.clip_norm > 0:
      n = ops.safe_sqrt(ops.tree_sq_norm_per_sample(grad))
      scale = jnp.minimum(1.0, cfg.clip_norm / jnp.maximum(n, 1e-12))
      grad = jax.tree_util.tree_map(functools.partial(ops.per_sample, scale), grad)
    if cfg.inner_optimizer == 'sgd':
      update = grad
    else:
      mu, nu = opt
      mu = jax.tree_util.tree_map(lambda m, g: cfg.adam_b1 * m + (1 - cfg.adam_b1) * g, mu, grad)
      nu = jax.tree_util.tree_map(lambda v, g: cfg.adam_b2 * v + (1 - cfg.adam_b2) * g * g, nu, grad)
      t = (k + 1).astype(jnp.float32)
      c1, c2 = 1 - cfg.adam_b1 ** t, 1 - cfg.adam_b2 ** t
      update = jax.tree_util.tree_map(
          lambda m, v: (m / c1) / jnp.sqrt(v / c2 + cfg.adam_eps), mu, nu)
      opt = (mu, nu)
    fast = jax.tree_util.tree_map(lambda f, u: f - lr.astype(f.dtype) * u, fast, update)
    if mode == 'none':
      fast, opt = _sg(fast), _sg(opt)
    return (fast, opt), (loss, gnorm)

  def write(self, params: Params, context: Array, context_mask: Array, *,
            rng: Optional[Array] = None, deterministic: bool = True,
            K: Optional[int] = None) -> tuple[dict, dict]:
    """WRITE a batch of contexts [B, S] (right-padded, mask [B, S]) into memory.

    Returns (state, stats): state['memory'] [B, m, d] (+ state['proj'] for per-sample projection);
    stats: 'write_loss' [B, K] (loss at M_0..M_{K-1}), 'grad_norm' [B, K], 'delta_norm' [B]
    (|M_K - M_0|), 'mem_norm' [B] (|M_K|).
    """
    if self.cfg.inner_impl == 'vmap':
      return self._write_vmapped(params, context, context_mask, rng=rng,
                                 deterministic=deterministic, K=K)
    return self._write_batched(params, context, context_mask, rng=rng,
                               deterministic=deterministic, K=K)

  def final_write_loss(self, params: Params, state: dict, context: Array,
                       context_mask: Array) -> Array:
    """WRITE loss [B] at the written memory M_K (the stats hold it at M_0..M_{K-1})."""
    params = self.write_params(params)
    ctx_embeds = self.backbone.embed(params['backbone'], context[:, :-1])
    return self.write_loss(params, state, ctx_embeds, context, context_mask)

  def write_memory(self, params: Params, context: Array, context_mask: Array,
                   rng: Optional[Array] = None, *, deterministic: bool = True,
                   K: Optional[int] = None) -> tuple[Array, dict]:
    """The per-sample contract: context [S] -> (memory [m, d], stats). `jax.vmap` it over a batch.

    (With memory.mem_proj='per_sample' the adapted projection is part of the state: use
    `write`, which returns it too.)
    """
    state, stats = self._write_one(params, context, context_mask, rng, deterministic, K)
    return state['memory'], stats

  def _write_one(self, params, context, context_mask, rng, deterministic, K):
    state, stats = self._write_batched(params, context[None], context_mask[None], rng=rng,
                                       deterministic=deterministic, K=K)
    squeeze = lambda x: x[0]
    return jax.tree_util.tree_map(squeeze, state), jax.tree_util.tree_map(squeeze, stats)

  def _write_vmapped(self, params, context, context_mask, *, rng, deterministic, K):
    b = context.shape[0]
    keys = None if rng is None else jax.random.split(rng, b)
    one = lambda c, m, k: self._write_one(params, c, m, k, deterministic, K)
    return jax.vmap(one, in_axes=(0, 0, None if keys is None else 0))(context, context_mask, keys)

  def _write_batched(self, params, context, context_mask, *, rng, deterministic, K):
    cfg = self.cfg
    K = cfg.K if K is None else K
    if K < 0:
      raise ValueError(f'K must be >= 0, got {K}')
    b = context.shape[0]
    params = self.write_params(params)  # LoRA merged once, outside the scan
    fast = self.init_fast(params, b)
    modes = cfg.step_modes(K)
    if cfg.grad_mode == 'none':
      fast = _sg(fast)
    m0 = fast['memory']
    opt = ()
    if cfg.inner_optimizer == 'adam':
      zeros = jax.tree_util.tree_map(jnp.zeros_like, fast)
      opt = (zeros, zeros)
    # Context embeddings do not depend on the memory: computed once for all K steps.
    ctx_embeds = self.backbone.embed(params['backbone'], context[:, :-1])
    lrs = self.inner_lrs(params, K) if K else jnp.zeros((0,), jnp.float32)
    use_remat, policy = common.get_remat_policy(cfg.inner_remat, 'memory.inner_remat')
    step_losses, step_norms = [], []
    start = 0
    # Consecutive steps of the same gradient mode form one scan (static split). A last step in
    # mode 'first' or 'none' runs on its own: only its loss keeps an outer gradient (see
    # inner_step).
    for mode, group, loss_grad in _groups(modes):
      n = len(group)
      body = functools.partial(self.inner_step, params, ctx_embeds, context, context_mask, rng,
                               deterministic, mode, loss_grad=loss_grad)
      if use_remat:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
      xs = (jnp.arange(start, start + n), lrs[start:start + n])
      # Rematerialised steps need a rolled scan: unrolled, XLA schedules the recomputation early
      # and keeps every step's activations alive anyway (measured: no memory saved).
      unroll = bool(cfg.unroll_inner) and not use_remat
      (fast, opt), (ls, ns) = jax.lax.scan(body, (fast, opt), xs, unroll=unroll)
      step_losses.append(ls.T)
      step_norms.append(ns.T)
      start += n
    cat = lambda xs: jnp.concatenate(xs, axis=1) if xs else jnp.zeros((b, 0), jnp.float32)
    stats = {'write_loss': cat(step_losses), 'grad_norm': cat(step_norms),
             **ops.norm_stats(fast['memory'], m0)}
    return fast, stats


def _groups(modes):
  """[(mode, step indices, loss_grad)]: runs of consecutive steps of one mode; a last step in
  mode 'first' or 'none' is a group of its own, the only one with loss_grad off-second-order."""
  out = []
  for i, m in enumerate(modes):
    if out and out[-1][0] == m:
      out[-1][1].append(i)
    else:
      out.append((m, [i]))
  if out and out[-1][0] != 'second' and len(out[-1][1]) > 1:
    m, idx = out.pop()
    out += [(m, idx[:-1]), (m, idx[-1:])]
  return [(m, idx, m == 'second' or j == len(out) - 1) for j, (m, idx) in enumerate(out)]
