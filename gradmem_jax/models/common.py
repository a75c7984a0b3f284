"""Pieces shared by the decoders: dtype and remat names, norms, rotary embeddings, attention.

Everything here is differentiable to any order with plain XLA ops (no custom kernels), which the
second-order meta-gradient needs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array

DTYPES = {
    'float32': jnp.float32,
    'bfloat16': jnp.bfloat16,
    'float16': jnp.float16,
    'float64': jnp.float64,
}

# Names for rematerialisation policies (config strings, maxtext style). `None` = no remat.
REMAT_POLICIES: dict[str, Optional[Callable[..., Any]]] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything_saveable': jax.checkpoint_policies.everything_saveable,
}


def get_dtype(name: str, field: str = 'dtype') -> Any:
  """Maps a config string to a jnp dtype, with an error naming the field."""
  if name not in DTYPES:
    raise ValueError(f'{field}={name!r} is not a known dtype; allowed: {sorted(DTYPES)}')
  return DTYPES[name]


def get_remat_policy(name: str, field: str = 'remat') -> tuple[bool, Any]:
  """Returns (use_remat, policy) for a config string."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'{field}={name!r} is not a known remat policy; allowed: {sorted(REMAT_POLICIES)}')
  return name != 'none', REMAT_POLICIES[name]


def dtypes(cfg) -> tuple[Any, Any]:
  """(compute dtype, parameter dtype) of a model config (its `dtype` and `param_dtype`)."""
  return get_dtype(cfg.dtype), get_dtype(cfg.param_dtype)


def at_least_f32(x: Array) -> Array:
  """Upcasts half precision to float32; keeps float32/float64 (tests run in float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_model_fields(cfg, positive: tuple[str, ...]) -> None:
  """The checks every family's config shares: `positive` fields > 0, known dtypes and remat."""
  for f in positive:
    if getattr(cfg, f) <= 0:
      raise ValueError(f'model.{f} must be > 0, got {getattr(cfg, f)}')
  get_dtype(cfg.dtype, 'model.dtype')
  get_dtype(cfg.param_dtype, 'model.param_dtype')
  get_remat_policy(cfg.remat, 'model.remat')


def blocks(block_cls, cfg, prefix: str, static_argnums: tuple = ()) -> list:
  """cfg.num_layers blocks named prefix_0, prefix_1, ..., rematerialised by cfg.remat's policy."""
  use_remat, policy = get_remat_policy(cfg.remat, 'model.remat')
  if use_remat:
    block_cls = nn.remat(block_cls, policy=policy, static_argnums=static_argnums)
  return [block_cls(cfg, name=f'{prefix}_{i}') for i in range(cfg.num_layers)]


def scan_blocks(cfg, layers: list, block: nn.Module, x: Array, *args,
                dropout_rng: Optional[Array] = None) -> Array:
  """The blocks as one lax.scan: each layer's parameters (prefix_0, prefix_1, ... as stored, so
  names and checkpoints are unchanged) are stacked on a leading axis and `block` (an unbound
  block, parent=None) is applied per step to (x, *args). Differentiable to any order like the
  loop (a scan transposes to a scan); cfg.remat's policy rematerialises each step. With a
  dropout_rng, layer i draws its masks from split(dropout_rng, num_layers)[i]: fresh per layer and
  per call, but not the loop's streams (those fold in the module path)."""
  stacked = jax.tree_util.tree_map(lambda *ps: jnp.stack(ps),
                                   *[layer.variables['params'] for layer in layers])
  keys = None if dropout_rng is None else jax.random.split(dropout_rng, len(layers))
  use_remat, policy = get_remat_policy(cfg.remat, 'model.remat')

  def step(h, xs):
    params, key = xs
    rngs = {} if key is None else {'dropout': key}
    return block.apply({'params': params}, h, *args, rngs=rngs), None

  if use_remat:
    step = jax.checkpoint(step, policy=policy)
  x, _ = jax.lax.scan(step, x, (stacked, keys))
  return x


def embedding(cfg, num: int, std: float) -> nn.Embed:
  """A [num, hidden_size] embedding table in the config's dtypes, initialised N(0, std)."""
  dtype, pdtype = dtypes(cfg)
  return nn.Embed(num, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
                  embedding_init=normal_init(std))


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in float32 (Llama)."""
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = at_least_f32(x)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(x32.dtype)).astype(jnp.promote_types(self.dtype, x.dtype))


def rms_norm(cfg, name: Optional[str] = None) -> RMSNorm:
  """An RMSNorm with the config's `rms_eps` and dtypes."""
  dtype, pdtype = dtypes(cfg)
  return RMSNorm(cfg.rms_eps, dtype, pdtype, name=name)


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings (rotate-half convention, as in the Hugging Face Llama checkpoints).


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
  """Inverse frequencies [head_dim // 2], optionally with Llama-3 frequency scaling.

  Llama-3 scaling keeps high frequencies (short wavelengths), divides low frequencies by `factor`
  and interpolates smoothly in between (Llama 3 report, "rope scaling").
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if not scaling:
    return inv_freq.astype(np.float32)
  kind = scaling.get('rope_type', scaling.get('type'))
  if kind == 'default':
    return inv_freq.astype(np.float32)
  if kind != 'llama3':
    raise ValueError(f"rope_scaling.rope_type={kind!r} is not supported; allowed: 'llama3', 'default'")
  factor = float(scaling['factor'])
  low = float(scaling['low_freq_factor'])
  high = float(scaling['high_freq_factor'])
  old_len = float(scaling['original_max_position_embeddings'])
  wavelen = 2 * math.pi / inv_freq
  low_freq_wavelen = old_len / low
  high_freq_wavelen = old_len / high
  # Long wavelengths (low frequencies) are slowed down by `factor`.
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  # Medium band: blend between scaled and unscaled.
  smooth = (old_len / wavelen - low) / (high - low)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, blended, scaled).astype(np.float32)


def rope_tables(positions: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
  """cos, sin tables [..., T, head_dim] for integer positions [..., T]."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [..., T, dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)  # [..., T, dh]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x [B, T, H, dh]; cos/sin [T, dh] or [B, T, dh]. Rotate-half convention."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  if cos.ndim == 2:
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  else:
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype))


# ----------------------------------------------------------------------------------------------
# Causal attention.


def causal_attention(q: Array, k: Array, v: Array, *,
                     dropout_rate: float = 0.0,
                     dropout_rng: Optional[Array] = None,
                     deterministic: bool = True,
                     q_block: int = 0) -> Array:
  """Causal softmax attention with grouped-query support.

  q: [B, T, H, dh]; k, v: [B, T, KV, dh] with H a multiple of KV. Returns [B, T, H, dh].
  Softmax in float32. Right padding needs no mask: with causal attention a real token never sees a
  later (pad) position.

  Layout: heads are moved next to the batch and merged with it, so both products are plain
  batched matmuls [B*H, T, dh] x [B*H, dh, T]. On XLA:CPU this ran the second-order training step
  ~17% faster than einsums over [B, T, KV, G, dh] (WORKSPACE.md, performance log).

  q_block > 0 (and < T): the queries are taken in blocks of q_block rows, each against the keys
  up to its own last row only, so the fully masked blocks above the diagonal are never computed
  (about (n+1)/2n of the dense products for n blocks). Exact: the same softmax over the same keys.
  """
  b, t, h, dh = q.shape
  kv = k.shape[2]
  if h % kv:
    raise ValueError(f'num_heads={h} must be a multiple of num_kv_heads={kv}')
  if h != kv:
    k = jnp.repeat(k, h // kv, axis=2)
    v = jnp.repeat(v, h // kv, axis=2)
  heads_major = lambda x: jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, t, dh)
  qh = heads_major(q * (1.0 / math.sqrt(dh)))
  kh, vh = heads_major(k), heads_major(v)
  if not deterministic and dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError('attention dropout needs a dropout rng')
  bounds = list(range(0, t, q_block)) + [t] if 0 < q_block < t else [0, t]
  if len(bounds) > 2 and not deterministic and dropout_rate > 0.0:
    raise ValueError('attention dropout with query blocks is not supported: set the block size '
                     '(model.attn_q_block) to 0')
  outs = []
  for s, e in zip(bounds[:-1], bounds[1:]):
    scores = at_least_f32(jnp.matmul(qh[:, s:e], jnp.swapaxes(kh[:, :e], 1, 2)))  # [B*H, e-s, e]
    causal = np.arange(e)[None, :] <= np.arange(s, e)[:, None]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if not deterministic and dropout_rate > 0.0:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    outs.append(jnp.matmul(probs.astype(vh.dtype), vh[:, :e]))  # [B*H, e-s, dh]
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  return jnp.transpose(out.reshape(b, h, t, dh), (0, 2, 1, 3))
