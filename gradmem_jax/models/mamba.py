"""Mamba (selective state space) decoder: the paper's recurrent-state baseline (SPEC §5).

Each block is x + Mixer(RMSNorm(x)); the mixer projects to two streams (u, z), runs u through a
causal depthwise convolution and SiLU, makes the step size dt and the state maps B, C from u
(the "selective" part), and scans the linear recurrence

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t,    y_t = C_t . h_t + D u_t

per channel over a state of `state_size` numbers, then gates y with SiLU(z) and projects back.
The whole context is carried in that fixed-size state (layers x d_inner x (state_size +
conv_kernel - 1) numbers), which is what makes it a memory baseline: run it with
`memory.method=full_context` to read [C; Q] through the state, or under GradMem / RMT like any
other family (memory vectors are the first inputs of the sequence).

Positions are not used (the recurrence orders the tokens). Right padding needs no mask: a real
token never sees a later one. Everything is plain XLA (the scan is `lax.associative_scan` or a
`lax.scan`), so the second-order meta-gradient goes through it. The scan materialises the
[B, T, d_inner, state] tensors (no fused kernel), so a Mamba step moves far more bytes than its
FLOPs suggest (WORKSPACE section 7). Parameter names follow the
Hugging Face Mamba checkpoints (`MambaForCausalLM`; name table at the end of this file).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradmem_jax.models import base, common, hf

Array = jax.Array

SCAN_IMPLS = ('sequential', 'associative')


@dataclasses.dataclass(frozen=True)
class MambaConfig:
  """Mamba's defaults (expand 2, state 16, kernel 4) at the paper's KV width and depth."""
  vocab_size: int = 70
  hidden_size: int = 128          # d
  num_layers: int = 4
  state_size: int = 16            # N: state numbers per inner channel
  expand: int = 2                 # inner width d_inner = expand * d
  conv_kernel: int = 4            # causal depthwise convolution width
  time_step_rank: int = 0         # rank of the dt projection (0: ceil(d / 16), HF's 'auto')
  use_bias: bool = False          # biases on in_proj / out_proj
  use_conv_bias: bool = True
  rms_eps: float = 1e-5
  residual_in_fp32: bool = True   # keep the residual stream in float32 under bf16 compute
  init_std: float = 0.02          # token embeddings (projections: U(+-1/sqrt(fan_in)), torch's)
  time_step_min: float = 0.001    # dt at init: log-uniform in [min, max], floored
  time_step_max: float = 0.1
  time_step_floor: float = 1e-4
  time_step_scale: float = 1.0    # dt_proj weights at init: U(+-scale / sqrt(rank))
  scan_impl: str = 'sequential'   # 'sequential' (lax.scan over time) | 'associative' (log depth,
                                  # lax.associative_scan): the same recurrence. On CPU sequential
                                  # ran GradMem's K=2 step 1.35x faster in 0.8x the memory
                                  # (WORKSPACE section 7); associative is not measured on a GPU
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'
  scan_layers: bool = False       # the blocks as one lax.scan over stacked weights
                                  # (common.scan_blocks)

  RUNTIME_FIELDS: ClassVar[tuple] = ('scan_impl', 'scan_layers')

  @property
  def d_inner(self) -> int:
    return self.expand * self.hidden_size

  @property
  def dt_rank(self) -> int:
    return self.time_step_rank or math.ceil(self.hidden_size / 16)

  def validate(self) -> None:
    common.check_model_fields(self, ('vocab_size', 'hidden_size', 'num_layers', 'state_size',
                                     'expand', 'conv_kernel', 'rms_eps', 'time_step_min',
                                     'time_step_max', 'time_step_floor', 'time_step_scale'))
    if self.time_step_rank < 0:
      raise ValueError(f'model.time_step_rank must be >= 0 (0: ceil(hidden_size / 16)), got '
                       f'{self.time_step_rank}')
    if self.time_step_min > self.time_step_max:
      raise ValueError(f'model.time_step_min={self.time_step_min} must be <= '
                       f'model.time_step_max={self.time_step_max}')
    if self.scan_impl not in SCAN_IMPLS:
      raise ValueError(f'model.scan_impl={self.scan_impl!r} is not known; allowed: '
                       f'{list(SCAN_IMPLS)}')


def _fan_in_uniform(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a [in, out] kernel (torch's nn.Linear default)."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def selective_scan(decay: Array, inp: Array, impl: str = 'sequential') -> Array:
  """All states of h_t = decay_t * h_{t-1} + inp_t, h_{-1} = 0, along axis 1 ([B, T, ...])."""
  if impl == 'sequential':
    def step(h, xs):
      a, b = xs
      h = a * h + b
      return h, h
    _, hs = jax.lax.scan(step, jnp.zeros_like(inp[:, 0]),
                         (jnp.moveaxis(decay, 1, 0), jnp.moveaxis(inp, 1, 0)))
    return jnp.moveaxis(hs, 0, 1)

  def combine(left, right):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2

  return jax.lax.associative_scan(combine, (decay, inp), axis=1)[1]


class CausalConv(nn.Module):
  """Depthwise causal convolution over time: out[t, c] = bias[c] + sum_j kernel[c, 0, j] *
  x[t + j - (k - 1), c] (zeros before the start). The kernel keeps torch's Conv1d layout
  [channels, 1, k], so checkpoints load without reshaping."""
  channels: int
  kernel_size: int
  use_bias: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [B, T, C]
    k = self.kernel_size
    bound = 1.0 / math.sqrt(k)  # torch's default for a depthwise Conv1d (fan_in = k)
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    kernel = self.param('kernel', init, (self.channels, 1, k), self.param_dtype)
    t = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    w = kernel[:, 0, :].astype(self.dtype)  # [C, k]
    out = sum(xp[:, j:j + t, :] * w[:, j] for j in range(k))
    if self.use_bias:
      out = out + self.param('bias', init, (self.channels,), self.param_dtype).astype(self.dtype)
    return out


class MambaMixer(nn.Module):
  cfg: MambaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = common.dtypes(cfg)
    din, n, r = cfg.d_inner, cfg.state_size, cfg.dt_rank
    dense = lambda feats, name, bias=False, **kw: nn.Dense(
        feats, use_bias=bias, dtype=dtype, param_dtype=pdtype,
        **{'kernel_init': _fan_in_uniform, **kw}, name=name)
    b, t, d = x.shape
    flat = lambda a: a.reshape(b * t, a.shape[-1])  # 2-D dense products (see LlamaAttention)
    uz = dense(2 * din, 'in_proj', cfg.use_bias)(flat(x)).reshape(b, t, 2 * din)
    u, z = jnp.split(uz, 2, axis=-1)
    u = jax.nn.silu(CausalConv(din, cfg.conv_kernel, cfg.use_conv_bias, dtype, pdtype,
                               name='conv1d')(u))
    dbc = dense(r + 2 * n, 'x_proj')(flat(u)).reshape(b, t, r + 2 * n)
    dt_low, bmat, cmat = jnp.split(dbc, [r, r + n], axis=-1)
    dt_std = cfg.time_step_scale / math.sqrt(r)

    def dt_bias_init(key, shape, dtype=jnp.float32):
      # softplus(bias) = dt, log-uniform in [time_step_min, time_step_max], floored.
      lo, hi = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
      dt = jnp.maximum(jnp.exp(jax.random.uniform(key, shape, jnp.float32) * (hi - lo) + lo),
                       cfg.time_step_floor)
      return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    dt = dense(din, 'dt_proj', True,
               kernel_init=lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -dt_std, dt_std),
               bias_init=dt_bias_init)(flat(dt_low)).reshape(b, t, din)
    a_log = self.param('A_log', lambda k, s, d: jnp.broadcast_to(
        jnp.log(jnp.arange(1, n + 1, dtype=d)), s), (din, n), pdtype)
    d_skip = self.param('D', nn.initializers.ones, (din,), pdtype)

    # The recurrence in float32 at least (as the reference's scan).
    f32 = common.at_least_f32
    dt, u32 = jax.nn.softplus(f32(dt)), f32(u)
    a = -jnp.exp(f32(a_log))                                       # [din, n]
    decay = jnp.exp(dt[..., None] * a)                             # [B, T, din, n]
    inp = (dt * u32)[..., None] * f32(bmat)[:, :, None, :]         # [B, T, din, n]
    h = selective_scan(decay, inp, cfg.scan_impl)
    y = jnp.einsum('btdn,btn->btd', h, f32(cmat)) + u32 * f32(d_skip)
    y = (y * jax.nn.silu(f32(z))).astype(dtype)
    return dense(d, 'out_proj', cfg.use_bias)(flat(y)).reshape(b, t, d)


class MambaBlock(nn.Module):
  cfg: MambaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = common.rms_norm(self.cfg, name='norm')(x)
    return x + MambaMixer(self.cfg, name='mixer')(h).astype(x.dtype)


class MambaDecoder(nn.Module):
  """Input embeddings [B, T, d] (positions ignored) -> final hidden states [B, T, d]."""
  cfg: MambaConfig

  def setup(self):
    cfg = self.cfg
    self.embeddings = common.embedding(cfg, cfg.vocab_size, cfg.init_std)
    self.layers = common.blocks(MambaBlock, cfg, 'layers')
    self.norm_f = common.rms_norm(cfg)

  def embed(self, ids: Array) -> Array:
    return self.embeddings(ids)

  def __call__(self, embeds: Array, positions: Array, deterministic: bool = True) -> Array:
    del positions, deterministic  # no positions, no dropout
    x = embeds.astype(common.get_dtype(self.cfg.dtype))
    if self.cfg.residual_in_fp32:
      x = common.at_least_f32(x)
    if self.cfg.scan_layers and not self.is_initializing():
      x = common.scan_blocks(self.cfg, self.layers, MambaBlock(self.cfg, parent=None), x)
    else:
      for block in self.layers:
        x = block(x)
    return self.norm_f(x)

  def logits(self, hidden: Array) -> Array:
    return common.at_least_f32(self.embeddings.attend(hidden))

  def init_graph(self, ids: Array, positions: Array) -> Array:
    """Touches every parameter (used by `init`)."""
    return self.logits(self(self.embed(ids), positions))


def state_floats(cfg: MambaConfig, context_len: int) -> int:
  """What a Mamba carries after reading a context, whatever its length: each layer's scan state
  (d_inner x state_size) and convolution window (d_inner x (conv_kernel - 1))."""
  del context_len
  return cfg.num_layers * cfg.d_inner * (cfg.state_size + cfg.conv_kernel - 1)


# ------------------------------------------------------------------------------------------------
# The family: registry entry and Hugging Face name table.


def _mamba_config(c: Mapping[str, Any]) -> dict:
  for f, want in (('hidden_act', 'silu'), ('tie_word_embeddings', True)):
    if f in c and c[f] != want:
      raise ValueError(f'config.{f}={c[f]!r} is not supported for mamba; allowed: {want!r}')
  hidden = int(hf.need(c, 'hidden_size'))
  expand = int(c.get('expand', 2))
  inner = c.get('intermediate_size')
  if inner is not None and int(inner) != expand * hidden:
    raise ValueError(f'config.intermediate_size={inner} is not expand * hidden_size = '
                     f'{expand * hidden}; only that is supported for mamba')
  rank = c.get('time_step_rank', 'auto')
  return {
      'kind': 'mamba',
      'vocab_size': int(hf.need(c, 'vocab_size')),
      'hidden_size': hidden,
      'num_layers': int(hf.need(c, 'num_hidden_layers')),
      'state_size': int(c.get('state_size', 16)),
      'expand': expand,
      'conv_kernel': int(c.get('conv_kernel', 4)),
      'time_step_rank': 0 if rank == 'auto' else int(rank),
      'use_bias': bool(c.get('use_bias', False)),
      'use_conv_bias': bool(c.get('use_conv_bias', True)),
      'rms_eps': float(c.get('layer_norm_epsilon', 1e-5)),
      'residual_in_fp32': bool(c.get('residual_in_fp32', True)),
      'time_step_min': float(c.get('time_step_min', 0.001)),
      'time_step_max': float(c.get('time_step_max', 0.1)),
      'time_step_floor': float(c.get('time_step_floor', 1e-4)),
      'time_step_scale': float(c.get('time_step_scale', 1.0)),
  }


def hf_name_table(cfg: MambaConfig) -> dict[tuple[str, ...], base.HFName]:
  """Our parameter path -> (HF tensor name without the base-model prefix, transpose?)."""
  table: dict[tuple[str, ...], base.HFName] = {
      ('embeddings', 'embedding'): ('embeddings.weight', False),
      ('norm_f', 'scale'): ('norm_f.weight', False)}
  for i in range(cfg.num_layers):
    ours, theirs = f'layers_{i}', f'layers.{i}'
    table[(ours, 'norm', 'scale')] = (f'{theirs}.norm.weight', False)
    mix = (ours, 'mixer')
    for proj, bias in (('in_proj', cfg.use_bias), ('x_proj', False), ('dt_proj', True),
                       ('out_proj', cfg.use_bias)):
      table[mix + (proj, 'kernel')] = (f'{theirs}.mixer.{proj}.weight', True)
      if bias:
        table[mix + (proj, 'bias')] = (f'{theirs}.mixer.{proj}.bias', False)
    table[mix + ('conv1d', 'kernel')] = (f'{theirs}.mixer.conv1d.weight', False)
    if cfg.use_conv_bias:
      table[mix + ('conv1d', 'bias')] = (f'{theirs}.mixer.conv1d.bias', False)
    table[mix + ('A_log',)] = (f'{theirs}.mixer.A_log', False)
    table[mix + ('D',)] = (f'{theirs}.mixer.D', False)
  return table


FAMILY = base.register_family(base.Family(
    name='mamba', config_cls=MambaConfig, module_cls=MambaDecoder,
    output_embedding=lambda params, cfg: params['embeddings']['embedding'].T,
    context_floats=state_floats,
    hf=base.HFSpec(model_types=('mamba',), config_from_hf=_mamba_config, name_table=hf_name_table,
                   tied_head=lambda cfg: 'embeddings.weight', default_prefix='backbone.')))
