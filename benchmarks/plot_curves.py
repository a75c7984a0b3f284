r"""Validation EM against training steps for runs, stages of a curriculum chained end to end.

  python benchmarks/plot_curves.py --out=curves.png \
      --runs='GradMem K=2=d/kv_gradmem_n4+d/kv_gradmem_n8+d/kv_gradmem_n16;RMT x1=d/kv_rmt_n4+...' \
      [--panel='SmolLM2-135M, bAbI QA1=d/smollm2_qa1']

Each run is `label=workdir[+workdir...]`; a workdir's metrics.jsonl gives `val/em` per step (and
the end-of-run `final/em`). The stages of a chain each count their steps from 0 (a stage starts
from the one before's weights, not its step), so the x axis is the chain's total steps, with a
dotted line where a stage starts. `--panel` adds a second panel of runs in the same syntax.
Prints the plotted points as JSON.
"""
from __future__ import annotations

import json
import os

from absl import app, flags


def _parse(spec: str) -> list[tuple[str, list[str]]]:
  runs = []
  for part in (p for p in spec.split(';') if p.strip()):
    label, sep, dirs = part.rpartition('=')
    if not sep or not label:
      raise ValueError(f'--runs entry {part!r}: expected label=dir[+dir...]')
    runs.append((label.strip(), [d.strip() for d in dirs.split('+') if d.strip()]))
  return runs


def chain_points(dirs: list[str]) -> tuple[list[tuple[int, float]], list[int]]:
  """(points (total step, val EM), total step where each later stage starts)."""
  points, starts, offset = [], [], 0
  for i, d in enumerate(dirs):
    path = os.path.join(d, 'metrics.jsonl')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no metrics.jsonl (is {d} a run workdir?)')
    last = 0
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue  # a torn last line of a killed run
        last = max(last, int(r.get('step', 0)))
        em = r.get('val/em', r.get('final/em'))
        if em is not None:
          points.append((offset + int(r['step']), float(em)))
    if i:
      starts.append(offset)
    offset += last
  return points, starts


FLAGS = flags.FLAGS


def define_flags():
  """Only when run as a script: tests import this module, and absl flags are process-global."""
  flags.DEFINE_string('runs', '', "'label=dir[+dir...];label=...' for the first panel")
  flags.DEFINE_string('panel', '', 'runs for a second panel, same syntax')
  flags.DEFINE_string('titles', 'KV retrieval;', "';'-separated panel titles")
  flags.DEFINE_string('out', 'curves.png', 'figure path (.png)')


def main(argv):
  del argv
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  panels = [p for p in (FLAGS.runs, FLAGS.panel) if p]
  titles = (FLAGS.titles.split(';') + ['', ''])[:len(panels)]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
  out = {}
  for ax, spec, title in zip(axes[0], panels, titles):
    for label, dirs in _parse(spec):
      pts, starts = chain_points(dirs)
      out[label] = pts
      line, = ax.plot([s for s, _ in pts], [100 * e for _, e in pts], marker='o', ms=3,
                      label=label)
      for s in starts:
        ax.axvline(s, color=line.get_color(), ls=':', lw=0.8)
    ax.set_xlabel('training steps (all stages)')
    ax.set_ylabel('validation EM (%)')
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(FLAGS.out, dpi=120)
  print(json.dumps(out))


if __name__ == '__main__':
  define_flags()
  app.run(main)
