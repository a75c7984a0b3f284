#!/usr/bin/env bash
# One prepared GPU session (the lent H100/H200 machine): environment, smoke run, train-step and
# inference benchmarks of the paper KV model, the N=64/K=5 remat comparison, and a short paper-scale
# training run. Everything lands in $OUT (default ./gpu_out). Run from the repository root:
#
#   bash benchmarks/gpu_session.sh            # wheels for missing packages in .whl/ (optional)
#
# Knobs (env): PAPER_MINUTES (default 1.5), BENCH_KS (default 1,2,5), BENCH_STEPS (default 10).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
PAPER_MINUTES=${PAPER_MINUTES:-1.0}
BENCH_KS=${BENCH_KS:-1,2,5}
BENCH_STEPS=${BENCH_STEPS:-5}
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

stamp "smoke"
timeout 180 python3 -m experiments.kv_retrieval --config=configs/kv_retrieval.py:tiny \
  --workdir=/tmp/gm_smoke > "$OUT/smoke.log" 2>&1
echo "smoke rc=$?"; grep -E "^\| (final val EM|steps) " "$OUT/smoke.log"

stamp "benchmarks: paper KV model, 16 pairs, batch 64, fp32 (highest precision)"
timeout 300 python3 benchmarks/train_step.py --Ks="$BENCH_KS" --modes=second --steps="$BENCH_STEPS" \
  --infer=false --out="$OUT/bench.jsonl" > /dev/null 2>"$OUT/bench.err"
timeout 120 python3 benchmarks/train_step.py --Ks=2 --modes=first --steps="$BENCH_STEPS" \
  --infer=true --out="$OUT/bench.jsonl" > /dev/null 2>>"$OUT/bench.err"
stamp "benchmark: TF32 matmuls (default precision), K=2 second order"
timeout 90 python3 benchmarks/train_step.py --Ks=2 --modes=second --steps="$BENCH_STEPS" \
  --infer=false --matmul_precision= --out="$OUT/bench_tf32.jsonl" > /dev/null 2>>"$OUT/bench.err"
stamp "benchmark: N=64, K=5, batch 8, remat none/full"
timeout 200 python3 benchmarks/train_step.py --Ks=5 --modes=second --n_pairs=64 --batch=8 \
  --steps="$BENCH_STEPS" --remat=none,full --infer=false --out="$OUT/bench_n64.jsonl" \
  > /dev/null 2>>"$OUT/bench.err"

stamp "paper-scale training: paper_n16, K=2, ${PAPER_MINUTES} min"
timeout 400 python3 -m experiments.kv_retrieval \
  --config=configs/kv_retrieval.py:paper_n16,K=2,optim.micro_batch_size=0,train.eval_every=1000 \
  --config.train.max_minutes="$PAPER_MINUTES" --config.data.n_val=1000 \
  --workdir=/tmp/gm_paper > "$OUT/paper_n16.log" 2>&1
echo "paper rc=$?"
cp /tmp/gm_paper/metrics.jsonl "$OUT/paper_n16_metrics.jsonl" 2>/dev/null
cp /tmp/gm_paper/results.json "$OUT/paper_n16_results.json" 2>/dev/null

stamp "summary"
python3 - "$OUT" <<'EOF'
import json, sys, os
out = sys.argv[1]
for name in ('bench.jsonl', 'bench_tf32.jsonl', 'bench_n64.jsonl'):
  p = os.path.join(out, name)
  if not os.path.exists(p):
    print(name, 'missing'); continue
  for line in open(p):
    r = json.loads(line)
    if r.get('name') == 'error':
      print(name, 'ERROR', r.get('config'), r.get('stderr_tail', '')[-600:]); continue
    print(f"{name:16s} {r['name']:5s} K={r['K']} {r.get('grad_mode')} N={r['n_pairs']} B={r['batch']} "
          f"remat={r['remat']} prec={r['matmul_precision']} median={r['step_s_median']*1e3:.1f}ms "
          f"min={r['step_s_min']*1e3:.1f} max={r['step_s_max']*1e3:.1f} {r['samples_per_s']:.0f}/s "
          f"mem={r['peak_rss_mb']:.0f}MB flops={r['flops_per_step']/1e9:.1f}G frac={r['frac_of_peak']:.3f}")
p = os.path.join(out, 'paper_n16_results.json')
if os.path.exists(p):
  r = json.load(open(p)); print('paper_n16', {k: r[k] for k in ('steps', 'steps_per_s', 'wall_time_s', 'stop_reason')}, r['best'])
EOF
tail -3 "$OUT/bench.err" 2>/dev/null
stamp "done"
