"""Small array helpers shared by the memory methods (pure functions)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def tree_sq_norm_per_sample(tree: Any) -> Array:
  """Sum of squares over every leaf, per sample (leading axis)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=-1) for x in leaves)


def safe_sqrt(x: Array) -> Array:
  """sqrt with finite derivatives of every order at 0 (value 0 there)."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def per_sample(scale: Array, x: Array) -> Array:
  """Multiplies x [B, ...] by a per-sample scale [B]."""
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def norm_stats(memory: Array, m0: Array) -> dict:
  """|M_K - M_0| and |M_K| per sample."""
  return {'delta_norm': safe_sqrt(tree_sq_norm_per_sample(memory - m0)),
          'mem_norm': safe_sqrt(tree_sq_norm_per_sample(memory))}


def pack_after(lengths: Array, first_len: int, second_len: int) -> Array:
  """Gather indices [B, first_len + second_len] that move a second block right after the real
  prefix of a right-padded first block: source layout [first (padded); second], result
  [first[:len]; second; first's padding]."""
  j = jnp.arange(first_len + second_len)[None, :]
  n = lengths[:, None]
  return jnp.where(j < n, j, jnp.where(j < n + second_len, first_len + (j - n), j - second_len))


def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def greedy_generate(next_logits, prompt: Array, prompt_len: Array, *, max_new_tokens: int,
                    stop_ids: tuple = (), pad_id: int = 0) -> Array:
  """Greedy decoding shared by the methods: `next_logits(buf, t)` -> [B, V], the logits that
  predict token t[b] of row b of `buf` [B, P + max_new_tokens] from the tokens before it.
  prompt [B, P] right-padded, prompt_len [B]. Returns [B, max_new_tokens] generated ids; after a
  stop id (kept) the rest is pad_id. The whole (short) sequence is recomputed per token: static
  shapes, exact."""
  b, p = prompt.shape
  length = p + max_new_tokens
  buf = jnp.zeros((b, length), jnp.int32).at[:, :p].set(prompt)
  buf = jnp.where(jnp.arange(length)[None] < prompt_len[:, None], buf, pad_id)
  rows = jnp.arange(b)

  def step(i, carry):
    buf, done = carry
    tok = jnp.argmax(next_logits(buf, prompt_len + i), axis=-1).astype(jnp.int32)
    tok = jnp.where(done, pad_id, tok)
    buf = buf.at[rows, prompt_len + i].set(tok)
    for s in stop_ids:
      done = done | (tok == s)
    return buf, done

  buf, _ = jax.lax.fori_loop(0, max_new_tokens, step, (buf, jnp.zeros((b,), bool)))
  idx = prompt_len[:, None] + jnp.arange(max_new_tokens)[None]
  return jnp.take_along_axis(buf, idx, axis=1)
