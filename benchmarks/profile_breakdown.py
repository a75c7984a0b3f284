"""Where a compiled step's time goes: run it under the JAX profiler and sum the XLA ops' own
(exclusive) time by kind, using the optimised HLO to tell what each op is.

Used by `benchmarks/train_step.py --profile`; also importable:

  compiled = jax.jit(step).lower(*args).compile()
  print(breakdown(lambda: compiled(*args), compiled.as_text(), steps=2))

Kinds: `dense dot` (a matmul of two matrices: the projections and MLP on [B*T, d]), `batched dot`
(a matmul with batch dimensions: attention scores and values); a fusion around a dot (XLA:CPU's
YNNPACK/XNNPACK library fusions) counts as its dot. `elementwise fusion` (loop and reduction
fusions: norms, RoPE, softmax, SwiGLU and their derivatives), `copy/transpose`, `other` (whatever
else has its own time: the loops' control, scatter, custom calls). Only ops named in the HLO
count; the profiler's own events are left out. Written for and tested on the CPU backend (on a GPU
the host and device planes may both carry events named after ops).
"""
from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
from typing import Callable

KINDS = ('dense dot', 'batched dot', 'elementwise fusion', 'copy/transpose', 'other')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$')
_FUSED = re.compile(r'calls=%?([\w.\-]+)')
_COMP = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


def hlo_kinds(hlo_text: str) -> dict[str, str]:
  """Instruction name -> kind, from an optimised HLO module's text."""
  comps: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      current = m.group(1)
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      comps[current].append(m.groups())
  def dot_kind(rest):
    lhs = re.search(r'lhs_batch_dims=\{([\d,]*)\}', rest)
    return 'batched dot' if lhs and lhs.group(1) else 'dense dot'

  fused_dot = {c: next((dot_kind(r) for _, _, op, r in ins if op == 'dot'), None)
               for c, ins in comps.items()}
  kinds = {}
  for ins in comps.values():
    for name, shape, op, rest in ins:
      if op == 'dot':
        kinds[name] = dot_kind(rest)
      elif op == 'fusion':
        called = _FUSED.search(rest)
        inner = fused_dot.get(called.group(1)) if called else None
        kinds[name] = inner or 'elementwise fusion'  # a fused dot counts as its dot
      elif op in ('copy', 'transpose'):
        kinds[name] = 'copy/transpose'
      else:
        kinds[name] = 'other'
  return kinds


def _exclusive_times(events):
  """(name, exclusive seconds) of events on one timeline line: nested events' time is taken out
  of their parent's (a while loop's own time excludes its body's ops)."""
  evs = sorted(events, key=lambda e: (e[1], -e[2]))
  out, stack = [], []  # stack of [name, start, end, child time]
  for name, start, dur in evs:
    end = start + dur
    while stack and stack[-1][2] <= start:
      n, s, e, child = stack.pop()
      out.append((n, (e - s) - child))
    if stack:
      stack[-1][3] += dur
    stack.append([name, start, end, 0.0])
  while stack:
    n, s, e, child = stack.pop()
    out.append((n, (e - s) - child))
  return out


def breakdown(run: Callable[[], object], hlo_text: str, steps: int = 2) -> dict:
  """Runs `run` (which must block until done) `steps` times under the profiler. Returns
  {'total_op_s': seconds per step in HLO ops summed over threads (ops run in parallel, so this
  can exceed the wall time), 'fractions': {kind: share of that time},
  'top_ops': the 8 costliest ops (name, kind, seconds per step)}."""
  import jax
  kinds = hlo_kinds(hlo_text)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        run()
    paths = glob.glob(os.path.join(tmp, '**', '*.xplane.pb'), recursive=True)
    if not paths:
      raise RuntimeError(f'the profiler wrote no .xplane.pb under {tmp}')
    data = jax.profiler.ProfileData.from_file(paths[0])
  per_kind: dict[str, float] = collections.defaultdict(float)
  per_op: dict[str, float] = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      evs = [(e.name, e.start_ns * 1e-9, e.duration_ns * 1e-9) for e in line.events]
      for name, excl in _exclusive_times(evs):
        key = name.split(':')[0].lstrip('%')
        if key in kinds:
          per_kind[kinds[key]] += excl
          per_op[key] += excl
  total = sum(per_kind.values())
  if total <= 0:
    raise RuntimeError('the profile holds no event named after an op of the HLO module')
  top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
  return {'total_op_s': total / steps,
          'fractions': {k: round(v / total, 4) for k, v in sorted(per_kind.items(),
                                                                  key=lambda kv: -kv[1])},
          'top_ops': [(n, kinds[n], round(s / steps, 4)) for n, s in top]}
