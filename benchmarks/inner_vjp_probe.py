r"""Probe (issue 11's lead, not kept): the second-order inner step's outer VJP computed
forward-over-reverse instead of JAX's reverse-over-reverse.

  python benchmarks/inner_vjp_probe.py 2 [N pairs, default 16]

Builds the paper KV training step (K from the argument, batch 64 as one batch, no warmup so the
step's update is not zero) twice in one process: as the library computes it, and with
GradMem.inner_step's second-order steps (SGD, no clipping: the paper KV preset) replaced by a
`jax.custom_vjp` on (g = dL/dM, per-sample loss) whose forward stores only its inputs and whose
backward is ONE forward-over-reverse pass: the jvp of (p, e, M, c) -> grad_(p,e,M) sum(c * L)
at c = 1 along (0, 0, v, loss cotangent), which gives H v (the Hessian's symmetry) plus the WRITE
loss term's own gradient together. Prints, per version: XLA's FLOP count and bytes accessed of
the whole step, 3 timed steps (the versions alternate); then the largest relative difference
between the two versions' outer gradients (leaf by leaf, by `jax.grad` of `outer_loss`) and
between their updated parameters.
"""
import json
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp
import numpy as np
from configs import kv_retrieval
from gradmem_jax.memory import gradmem as gm
from gradmem_jax.memory import ops
from gradmem_jax.training import build_experiment, init_state, make_train_step
from gradmem_jax.memory import outer_loss
from gradmem_jax.training.evaluators import xla_cost

if len(sys.argv) not in (2, 3):
  raise SystemExit('usage: inner_vjp_probe.py K [N pairs, default 16]')
K = int(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 16
orig = gm.GradMem.inner_step


def patched(self, params, ctx_embeds, context, context_mask, rng, deterministic, mode, carry, xs,
            loss_grad=True):
  if mode != 'second':
    return orig(self, params, ctx_embeds, context, context_mask, rng, deterministic, mode, carry,
                xs, loss_grad)
  c = self.cfg
  if (c.inner_optimizer != 'sgd' or c.clip_value > 0 or c.clip_norm > 0
      or c.mem_proj == 'per_sample'):
    raise SystemExit('the probe covers plain SGD steps only (the paper KV preset)')
  fast, opt = carry
  k, lr = xs
  step_rng = None if rng is None else jax.random.fold_in(rng, k)

  def per_sample(p, e, f, aux):
    ctx, msk, r = aux
    return self.write_loss(p, f, e, ctx, msk, rng=r, deterministic=deterministic)

  def zct(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)

  @jax.custom_vjp
  def g_and_loss(p, e, f, aux):
    loss, vjp = jax.vjp(lambda f: per_sample(p, e, f, aux), f)
    return vjp(jnp.ones_like(loss))[0], loss

  def fwd(p, e, f, aux):
    return g_and_loss(p, e, f, aux), (p, e, f, aux)

  def bwd(res, cts):
    p, e, f, aux = res
    v, lct = cts
    weighted = lambda p, e, f, w: jax.grad(
        lambda p, e, f: jnp.sum(w * per_sample(p, e, f, aux)), argnums=(0, 1, 2))(p, e, f)
    ones = jnp.ones(lct.shape, lct.dtype)
    zp = jax.tree_util.tree_map(jnp.zeros_like, p)
    _, out = jax.jvp(weighted, (p, e, f, ones), (zp, jnp.zeros_like(e), v, lct))
    return tuple(out) + (jax.tree_util.tree_map(zct, aux),)

  g_and_loss.defvjp(fwd, bwd)
  grad, loss = g_and_loss(params, ctx_embeds, fast, (context, context_mask, step_rng))
  gnorm = ops.safe_sqrt(ops.tree_sq_norm_per_sample(grad))  # as GradMem.inner_step
  fast = jax.tree_util.tree_map(lambda f, u: f - lr.astype(f.dtype) * u, fast, grad)
  return (fast, opt), (loss, gnorm)


config = kv_retrieval.get_config(
    f'paper_n16,n_pairs={N},K={K},batch_size=64,optim.micro_batch_size=0,optim.warmup_steps=0')
exp = build_experiment(config)
state = init_state(exp, jax.random.PRNGKey(0))
batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(64))[1].items()}
rng = jax.random.PRNGKey(1)
n_target = jnp.maximum(jnp.sum(batch['target_mask']).astype(jnp.float32), 1.0)
n_samples = jnp.float32(batch['context'].shape[0])


def grads(params):
  f = lambda p: outer_loss(exp.method, p, batch, rng=rng, train=True, n_target=n_target,
                           n_samples=n_samples,
                           inner_loss_weight=float(config.memory.inner_loss_weight))[0]
  return jax.grad(f)(params)


built = {}
for name in ('library', 'fwdrev'):
  gm.GradMem.inner_step = patched if name == 'fwdrev' else orig  # takes effect while tracing
  step = jax.jit(make_train_step(exp)).lower(state, batch, rng).compile()
  g = jax.jit(lambda p: grads(p))(state['params'])  # a fresh function: no cached trace
  gm.GradMem.inner_step = orig
  new_state, metrics = step(state, batch, rng)
  built[name] = dict(step=step, cost=xla_cost(step), grads=g, params=new_state['params'],
                     loss=float(metrics['loss']), times=[])
for _ in range(3):
  for name, b in built.items():
    t = time.perf_counter()
    jax.block_until_ready(b['step'](state, batch, rng))
    b['times'].append(round(time.perf_counter() - t, 2))
for name, b in built.items():
  print(json.dumps({'version': name, 'K': K, 'n_pairs': N,
                    'gflop': round(b['cost']['flops'] / 1e9, 1),
                    'bytes_accessed_gb': round(b['cost'].get('bytes accessed', 0) / 1e9, 2),
                    's_per_step': b['times'], 'loss': b['loss']}))


def max_rel(a, b):
  return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-30))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


lib, fr = built['library'], built['fwdrev']
print(json.dumps({'grad_max_rel_diff': max_rel(lib['grads'], fr['grads']),
                  'updated_params_max_rel_diff': max_rel(
                      jax.tree_util.tree_map(jnp.subtract, lib['params'], state['params']),
                      jax.tree_util.tree_map(jnp.subtract, fr['params'], state['params']))}))
