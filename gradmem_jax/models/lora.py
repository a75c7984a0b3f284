"""Low-rank adapters (LoRA) on a backbone's parameter tree, merged into the weights.

Family-agnostic: a target is a module name (e.g. 'q_proj'); every 2-D `kernel` ([in, out]) whose
enclosing module has that name gets factors A [in, r] and B [r, out], stored in a tree that mirrors
the backbone's ({'layers_0': {'self_attn': {'q_proj': {'a': A, 'b': B}}}}). `merge` returns the
backbone tree with W + (alpha / r) A @ B in place of each target kernel: one merge serves every
pass that uses the adapted weights (GradMem merges once per WRITE, outside its K-step scan), and
gradients reach A and B through it. B starts at zero, so the merged model starts as the base model.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = Any


def _kernels(tree: Params, prefix: tuple = ()):
  """(path of the module, kernel) for every 2-D 'kernel' leaf of a nested dict, in sorted order."""
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, dict) or hasattr(v, 'items'):
      yield from _kernels(v, prefix + (k,))
    elif k == 'kernel' and getattr(v, 'ndim', 0) == 2:
      yield prefix, v


def target_modules(backbone_params: Params, targets: Sequence[str]) -> list[tuple[str, ...]]:
  """Paths of the modules LoRA adapts; a ValueError naming memory.lora_targets when a target
  matches nothing."""
  found = list(_kernels(backbone_params))
  names = sorted({p[-1] for p, _ in found if p})
  missing = [t for t in targets if t not in names]
  if missing:
    raise ValueError(f'memory.lora_targets: {missing[0]!r} names no projection of this backbone; '
                     f'allowed: {names}')
  return [p for p, _ in found if p and p[-1] in targets]


def init(rng, backbone_params: Params, rank: int, targets: Sequence[str]) -> dict:
  """LoRA factors: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), B = 0; float32."""
  paths = target_modules(backbone_params, targets)
  kernels = dict(_kernels(backbone_params))
  out: dict = {}
  for i, path in enumerate(paths):
    d_in, d_out = kernels[path].shape
    bound = 1.0 / np.sqrt(d_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (d_in, rank), jnp.float32, -bound, bound)
    node = out
    for k in path:
      node = node.setdefault(k, {})
    node['a'] = a
    node['b'] = jnp.zeros((rank, d_out), jnp.float32)
  return out


def merge(backbone_params: Params, lora: dict, scale: float) -> Params:
  """The backbone tree with kernel + scale * A @ B for every module `lora` has factors for
  (the delta is cast to the kernel's dtype); other leaves are the same objects."""
  def walk(p, l):
    if 'a' in l and 'b' in l and not isinstance(l['a'], dict):
      w = p['kernel']
      delta = (l['a'] @ l['b']) * scale
      return {**p, 'kernel': w + delta.astype(w.dtype)}
    out = dict(p)
    for k, sub in l.items():
      if k not in p:
        raise KeyError(f'LoRA factors for module {k!r}, which the backbone does not have')
      out[k] = walk(p[k], sub)
    return out
  return walk(backbone_params, lora)


__all__ = ['init', 'merge', 'target_modules']
