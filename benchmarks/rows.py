"""Small pieces the benchmark scripts share: one JSON row out (stdout and, row by row, a file) and
the machine's busy time (Linux /proc/stat). No flags here, so any benchmark script can import it
(sys.path[0] is this folder when a script runs)."""
from __future__ import annotations

import os


def emit(line: str, out_path: str = '') -> None:
  """Prints one JSON line and appends it to out_path (when given) at once, so that a run cut
  short keeps the rows it already wrote."""
  print(line, flush=True)
  if out_path:
    with open(out_path, 'a') as f:
      f.write(line + '\n')


def busy_jiffies() -> tuple[int, int]:
  """(busy, total) clock ticks of the whole machine since boot (/proc/stat's first line)."""
  with open('/proc/stat') as f:
    vals = [int(x) for x in f.readline().split()[1:]]
  idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
  return sum(vals) - idle, sum(vals)
