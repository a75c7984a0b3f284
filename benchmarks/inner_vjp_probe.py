r"""Probe (issue 11's lead, not kept): the second-order inner step's outer VJP computed
forward-over-reverse instead of JAX's reverse-over-reverse.

  python benchmarks/inner_vjp_probe.py orig 2      # the library's step (reverse-over-reverse)
  python benchmarks/inner_vjp_probe.py fwdrev 2    # the same step, inner gradient as a custom_vjp

For mode 'fwdrev' GradMem.inner_step's second-order steps (SGD, no clipping: the paper KV preset)
are replaced by a `jax.custom_vjp` whose forward computes g = dL/dM and stores only its inputs,
and whose backward computes the cotangents of (params, context embeddings, M) as one jvp of the
full gradient along (0, 0, v) (the Hessian's symmetry), plus the per-sample loss's own VJP (the
objective weighs the WRITE loss). Prints XLA's FLOP count, bytes accessed, 3 timed steps (whole
batch of 64, no micro-batching) and the updated parameters' checksum, which must agree between
the two modes. Measured 2026-11-28 (WORKSPACE.md section 8): 241 against 398 GFLOP at K=2.
"""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp
import numpy as np
from configs import kv_retrieval
from gradmem_jax.memory import gradmem as gm
from gradmem_jax.training import build_experiment, init_state, make_train_step
from gradmem_jax.training.evaluators import xla_cost

if len(sys.argv) not in (3, 4) or sys.argv[1] not in ('orig', 'fwdrev'):
  raise SystemExit('usage: inner_vjp_probe.py orig|fwdrev K [N pairs, default 16]')
MODE, K = sys.argv[1], int(sys.argv[2])
N = int(sys.argv[3]) if len(sys.argv) > 3 else 16
orig = gm.GradMem.inner_step

def patched(self, params, ctx_embeds, context, context_mask, rng, deterministic, mode, carry, xs,
            loss_grad=True):
  if mode != 'second':
    return orig(self, params, ctx_embeds, context, context_mask, rng, deterministic, mode, carry, xs, loss_grad)
  c = self.cfg
  if c.inner_optimizer != 'sgd' or c.clip_value > 0 or c.clip_norm > 0 or c.mem_proj == 'per_sample':
    raise SystemExit('the probe covers plain SGD steps only (the paper KV preset)')
  fast, opt = carry
  k, lr = xs
  step_rng = None if rng is None else jax.random.fold_in(rng, k)
  def per_sample(p, e, f, aux):
    ctx, msk, r = aux
    return self.write_loss(p, f, e, ctx, msk, rng=r, deterministic=deterministic)
  tot = lambda p, e, f, aux: jnp.sum(per_sample(p, e, f, aux))
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
    full = jax.grad(lambda p, e, f: tot(p, e, f, aux), argnums=(0, 1, 2))
    zp = jax.tree_util.tree_map(jnp.zeros_like, p)
    _, hv = jax.jvp(full, (p, e, f), (zp, jnp.zeros_like(e), v))
    _, vjp = jax.vjp(lambda p, e, f: per_sample(p, e, f, aux), p, e, f)
    lg = vjp(lct)
    out = jax.tree_util.tree_map(jnp.add, hv, lg)
    return out + (jax.tree_util.tree_map(zct, aux),)
  g_and_loss.defvjp(fwd, bwd)
  grad, loss = g_and_loss(params, ctx_embeds, fast, (context, context_mask, step_rng))
  gnorm = jnp.sqrt(sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1) for x in jax.tree_util.tree_leaves(grad)) + 1e-30)
  fast = jax.tree_util.tree_map(lambda f, u: f - lr.astype(f.dtype) * u, fast, grad)
  return (fast, opt), (loss, gnorm)

if MODE == 'fwdrev':
  gm.GradMem.inner_step = patched
config = kv_retrieval.get_config(f'paper_n16,n_pairs={N},K={K},batch_size=64,optim.micro_batch_size=0')
exp = build_experiment(config)
state = init_state(exp, jax.random.PRNGKey(0))
batch = {k: jnp.asarray(v) for k, v in next(exp.task.train_batches(64))[1].items()}
rng = jax.random.PRNGKey(1)
step = jax.jit(make_train_step(exp))
c = step.lower(state, batch, rng).compile()
ca = xla_cost(c)
s1, m = c(state, batch, rng)
jax.block_until_ready(s1)
ts = []
for i in range(3):
  t = time.perf_counter(); s1, m2 = c(state, batch, rng); jax.block_until_ready(s1); ts.append(time.perf_counter() - t)
print(MODE, 'K', K, 'N', N, 'GFLOP', round(ca['flops'] / 1e9, 1), 'bytes GB', round(ca.get('bytes accessed', 0) / 1e9, 2),
      's/step', [round(t, 2) for t in ts], 'loss', float(m['loss']),
      'param checksum', float(sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(s1['params']))))
