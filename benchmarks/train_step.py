r"""Benchmark the GradMem training step (second vs first order) and WRITE+READ inference.

Paper KV model (Llama, 4 layers, width 128, 4 heads, MLP 512, vocab 70, m = 8), 16 pairs (context
113 tokens, query+target 9), batch 64, fp32. One configuration per fresh process (so peak memory
belongs to it); prints one JSON object per line:

  python benchmarks/train_step.py                         # K in {1,2,5} x {second, first} + infer
  python benchmarks/train_step.py --Ks=5 --modes=second --n_pairs=64 --batch=8 \
      --remat=none,full,dots --infer=false                 # the scale-out issue's remat numbers

Timing follows ../shared/docs/BENCHMARKING.md: compile outside the timed region (AOT), block on
results, median/min/max over >= 5 steps; steps during which other processes used more than 5% of
the machine are discarded and counted (CPU only); the fp32 matmul peak is measured in the same
process. FLOPs are XLA's cost analysis of the same step lowered without the micro-batch loop and
without remat, with the K inner steps unrolled (the analysis counts a loop body once): useful
FLOPs, no rematerialised work. On GPUs XLA's count differs (library GEMM calls); compare GPU rows
with the CPU rows' FLOPs for the same configuration.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from rows import busy_jiffies, emit  # noqa: E402  (beside this script)


# ------------------------------------------------------------------------------------------------
# Machine load (Linux /proc/stat).


def _own_cpu_s():
  t = os.times()
  return t.user + t.system


def other_load(fn):
  """Runs fn(); returns (result, wall seconds, fraction of the machine used by other processes)."""
  hz = os.sysconf('SC_CLK_TCK')
  ncpu = os.cpu_count() or 1
  b0, _ = busy_jiffies()
  c0 = _own_cpu_s()
  t0 = time.perf_counter()
  out = fn()
  wall = time.perf_counter() - t0
  b1, _ = busy_jiffies()
  c1 = _own_cpu_s()
  other = max((b1 - b0) / hz - (c1 - c0), 0.0)
  return out, wall, other / max(wall * ncpu, 1e-9)


def wait_for_idle(max_wait_s=120.0, threshold=0.05):
  """Waits until other processes use < threshold of the machine over 1 s (up to max_wait_s)."""
  t0 = time.perf_counter()
  while True:
    _, _, load = other_load(lambda: time.sleep(1.0))
    if load < threshold or time.perf_counter() - t0 > max_wait_s:
      return load


# ------------------------------------------------------------------------------------------------
# One configuration (runs in its own process).


def peak_memory_mb(jax):
  dev = jax.devices()[0]
  if dev.platform != 'cpu':
    stats = dev.memory_stats() or {}
    return stats.get('peak_bytes_in_use', 0) / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_now_mb():
  """(resident, high-water mark) of this process in MiB (Linux /proc; (None, None) elsewhere)."""
  got = {}
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(('VmRSS:', 'VmHWM:')):
          got[line.split(':')[0]] = int(line.split()[1]) / 1024
  except OSError:
    pass
  return got.get('VmRSS'), got.get('VmHWM')


def matmul_peak(jax, jnp, n=2048, reps=10):
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(a))
    ts.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(ts)


def cost_flops(compiled):
  from gradmem_jax.training.evaluators import xla_cost
  ca = xla_cost(compiled)
  return float(ca.get('flops', float('nan'))), float(ca.get('bytes accessed', float('nan')))


def _stamp(t0, what):
  # Progress on stderr with seconds since the process's start of work, so that a run cut off by a
  # timeout still says where its time went (the kit keeps the tail of stderr of a failed row).
  print(f'[{time.perf_counter() - t0:7.1f} s] {what}', file=sys.stderr, flush=True)


def run_one(args):
  t_start = time.perf_counter()
  import jax
  import jax.numpy as jnp
  import numpy as np
  if args.matmul_precision:
    jax.config.update('jax_default_matmul_precision', args.matmul_precision)
  from gradmem_jax.memory import forward
  from gradmem_jax.training import abstract_state, build_experiment, make_train_step
  from kv_setup import experiment_state_batch, paper_kv_config

  on_cpu = jax.devices()[0].platform == 'cpu'
  # Where a CPU row's peak memory comes from: resident and high-water MiB after the imports,
  # after building the experiment (and the matmul-peak probe), after compiling, after the warm-up
  # step and after timing.
  stages = {'imported': rss_now_mb()}
  # -1: the library's own choice (cache-sized chunks on CPU, the whole batch on accelerators)
  micro = args.micro_batch
  if micro > 0 and args.batch % micro:
    micro = 0
  shape = dict(n_pairs=args.n_pairs, K=args.K, mode=args.mode, batch=args.batch,
               overrides=args.overrides, impl=args.impl)
  config = paper_kv_config(micro=micro, remat=args.remat, **shape)
  config.eval.batch_size = args.batch
  exp, state, batch = experiment_state_batch(config, args.batch)
  micro = exp.config.optim.micro_batch_size
  rng = jax.random.PRNGKey(1)
  _stamp(t_start, f'built the experiment on {jax.devices()[0].device_kind}')
  peak = matmul_peak(jax, jnp)
  _stamp(t_start, 'measured the matmul peak')
  stages['built'] = rss_now_mb()
  t_compile = time.perf_counter()

  if args.name == 'train':
    fn = jax.jit(make_train_step(exp), donate_argnums=0)
    compiled = fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t_compile
    stages['compiled'] = rss_now_mb()
    _stamp(t_start, f'compiled ({compile_s:.1f} s)')

    def count():
      if micro or args.remat != 'none':
        # Useful FLOPs: the same step without the micro-batch loop and without remat (XLA's cost
        # analysis counts a loop body once, so rolled loops would be undercounted). Compiled
        # after the timing and the peak-memory reading: on a GPU, compiling (autotuning) a
        # whole-batch program would otherwise count in a micro-batched row's peak memory.
        flat = build_experiment(paper_kv_config(micro=0, **shape))
        return cost_flops(jax.jit(make_train_step(flat)).lower(
            abstract_state(flat)[0], batch, rng).compile())
      return cost_flops(compiled)
    run = lambda s: compiled(s, batch, rng)
    state, m = run(state)  # warm-up
    jax.block_until_ready(m)
    loss_first = float(m['loss'])  # the first step's loss (the same batch and init every run)
  else:
    # WRITE (K gradient steps on the memory, no graph kept) + READ logits, micro-batched like
    # training on CPU.
    def infer(params, b):
      return forward(exp.method, params, b)[0]

    def infer_chunked(params, b):
      if not micro:
        return infer(params, b)
      split = jax.tree_util.tree_map(
          lambda x: x.reshape((x.shape[0] // micro, micro) + x.shape[1:]), b)
      out = jax.lax.map(lambda bb: infer(params, bb), split)
      return out.reshape((-1,) + out.shape[2:])

    params = state['params']
    compiled = jax.jit(infer_chunked).lower(params, batch).compile()
    compile_s = time.perf_counter() - t_compile
    stages['compiled'] = rss_now_mb()
    _stamp(t_start, f'compiled ({compile_s:.1f} s)')
    count = lambda: cost_flops(jax.jit(infer).lower(params, batch).compile())
    jax.block_until_ready(compiled(params, batch))
    loss_first = None

  stages['warmed_up'] = rss_now_mb()
  _stamp(t_start, 'warmed up; timing')
  times, noisy = [], []
  load_before = wait_for_idle(args.max_idle_wait) if on_cpu else 0.0
  attempts = 0
  while len(times) < args.steps and attempts < args.steps * 4:
    attempts += 1
    if args.name == 'train':
      (state, m), wall, load = other_load(lambda: jax.block_until_ready(run(state)))
    else:
      _, wall, load = other_load(lambda: jax.block_until_ready(compiled(params, batch)))
    if on_cpu and load > 0.05:
      noisy.append(wall)
      continue
    times.append(wall)
  discarded = len(noisy)
  contended = len(times) < args.steps  # the machine never went quiet: report every step, flagged
  ts = np.asarray(times if not contended else times + noisy)
  med = float(np.median(ts))
  peak_mb = peak_memory_mb(jax)  # before the FLOP count's compile (see count)
  stages['timed'] = rss_now_mb()
  plan = compiled.memory_analysis()
  t_count = time.perf_counter()
  flops, bytes_acc = count()
  cost_compile_s = time.perf_counter() - t_count
  _stamp(t_start, f'counted the FLOPs ({cost_compile_s:.1f} s)')
  row = {
      'name': args.name, 'K': args.K, 'grad_mode': args.mode if args.name == 'train' else None,
      'batch': args.batch, 'n_pairs': args.n_pairs, 'remat': args.remat, 'impl': args.impl,
      'overrides': args.overrides,
      'micro_batch': micro, 'loss_first': loss_first, 'step_s_median': med,
      'step_s_min': float(ts.min()),
      'step_s_max': float(ts.max()), 'steps_timed': len(ts), 'steps_discarded_load': discarded,
      'contended': contended,
      'samples_per_s': args.batch / med, 'peak_rss_mb': peak_mb,
      'flops_per_step': flops, 'bytes_accessed': bytes_acc,
      'achieved_flops_per_s': flops / med, 'matmul_peak_flops_per_s': peak,
      'frac_of_peak': flops / med / peak, 'other_load_before': load_before,
      'device': str(jax.devices()[0].device_kind), 'platform': jax.devices()[0].platform,
      'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'matmul_precision': args.matmul_precision or 'default', 'cpu_count': os.cpu_count(),
      'machine': platform.processor() or platform.machine(),
      'compile_s': compile_s, 'cost_compile_s': cost_compile_s,
      'rss_stages_mb': ({k: {'rss': r, 'hwm': h} for k, (r, h) in stages.items()}
                        if on_cpu else None),
      'planned_temp_mb': (plan.temp_size_in_bytes / 2**20 if plan is not None else None),
      'process_work_s': time.perf_counter() - t_start,
  }
  if args.profile:
    import profile_breakdown  # beside this script (sys.path[0])
    if args.name == 'train':
      box = [state]

      def one():
        box[0], out = run(box[0])
        jax.block_until_ready(out)
    else:
      one = lambda: jax.block_until_ready(compiled(params, batch))
    row['profile'] = profile_breakdown.breakdown(one, compiled.as_text(), steps=2)
  print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------
# Driver: one fresh process per configuration.


FLAGS = flags.FLAGS
flags.DEFINE_string('Ks', '1,2,5', 'comma list of WRITE steps K')
flags.DEFINE_string('modes', 'second,first', 'comma list of gradient modes')
flags.DEFINE_integer('n_pairs', 16, 'key-value pairs per context')
flags.DEFINE_integer('batch', 64, 'batch size')
flags.DEFINE_integer('steps', 5, 'timed steps (clean of other load)')
flags.DEFINE_string('overrides', '', 'extra config overrides (key=value,...) for every row, '
                    "e.g. model.attn_q_block=128")
flags.DEFINE_bool('profile', False, 'also profile 2 steps and add where the time goes (by kind '
                  'of XLA op: benchmarks/profile_breakdown.py) to each row')
flags.DEFINE_string('remat', 'none', 'comma list of inner-step remat policies')
flags.DEFINE_string('impl', 'batched', 'comma list: batched, vmap')
flags.DEFINE_integer('micro_batch', -1, "-1: the library's auto rule (cache-sized chunks on "
                     'CPU, none on GPU); 0: whole batch')
flags.DEFINE_bool('infer', True, 'also time WRITE+READ inference')
flags.DEFINE_bool('train', True, 'time training steps')
flags.DEFINE_string('matmul_precision', 'highest',
                    "jax_default_matmul_precision ('highest' = true fp32 on GPUs; '' = default)")
flags.DEFINE_float('max_idle_wait', 120.0, 'seconds to wait for an idle machine')
flags.DEFINE_string('out', '', 'also append the JSON lines to this file')
# internal: a single configuration
flags.DEFINE_bool('one', False, 'run one configuration in this process (internal)')
flags.DEFINE_string('name', 'train', 'train | infer (internal)')
flags.DEFINE_integer('K', 2, 'WRITE steps (internal)')
flags.DEFINE_string('mode', 'second', 'gradient mode (internal)')


def main(argv):
  del argv
  args = FLAGS
  if args.one:
    run_one(args)
    return
  configs = []
  ks = [int(k) for k in args.Ks.split(',') if k]
  if args.train:
    for impl in args.impl.split(','):
      for remat in args.remat.split(','):
        for mode in args.modes.split(','):
          for k in ks:
            configs.append(['--name=train', f'--K={k}', f'--mode={mode}', f'--remat={remat}',
                            f'--impl={impl}'])
  if args.infer:
    for k in ks:
      configs.append(['--name=infer', f'--K={k}', '--mode=second', '--remat=none',
                      '--impl=batched'])
  common = [f'--n_pairs={args.n_pairs}', f'--batch={args.batch}', f'--steps={args.steps}',
            f'--micro_batch={args.micro_batch}', f'--matmul_precision={args.matmul_precision}',
            f'--max_idle_wait={args.max_idle_wait}', f'--profile={args.profile}',
            f'--overrides={args.overrides}']
  for c in configs:
    cmd = [sys.executable, os.path.abspath(__file__), '--one'] + c + common
    run_fresh(cmd, c, args.out)


def run_fresh(cmd: list, config, out_path: str) -> None:
  """Runs one configuration in a fresh process; prints (and appends to out_path) its JSON rows,
  or one error row with the tail of its stderr."""
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode != 0 or not lines:
    lines = [json.dumps({'name': 'error', 'config': config, 'returncode': out.returncode,
                         'stderr_tail': out.stderr[-2000:]})]
  for l in lines:
    emit(l, out_path)


if __name__ == '__main__':
  app.run(main)
