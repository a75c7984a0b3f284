"""Metrics outputs (metrics.jsonl, TensorBoard) and console progress with rate and ETA."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Mapping, Optional

from absl import logging

from gradmem_jax.metrics_rows import parse_row


def _scalar(v: Any) -> Optional[float]:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f if math.isfinite(f) else None


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl; mirrors scalars to TensorBoard.

  Only process 0 writes. On resume, rows after the restored step (written after the last
  checkpoint, before the crash) and a torn last line are dropped, so the file stays consistent
  with the training state. The log is for reading and never stops a run: a line that cannot be
  read (bytes that are not UTF-8, text that is not JSON, JSON that is not an object or has no
  numeric step) is moved to metrics.jsonl.rejected with a warning, and a log that cannot be read
  or written at all gives a warning, not an error.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: Optional[int] = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._write_failed = False
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      try:
        self._truncate_after(resume_step)
      except OSError as e:
        _warn(f'{self.path}: could not drop the rows after step {resume_step} on resume ({e}); '
              'appending to the file as it is')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
      logging.warning('tensorboardX is not installed: no TensorBoard event files')

  def _truncate_after(self, step: int) -> None:
    with open(self.path, 'rb') as f:
      lines = f.read().split(b'\n')
    torn = lines.pop()  # after the last newline: b'' for a complete file, else a torn line
    keep, rejected, bad = [], [], []
    for n, raw in enumerate(lines, 1):
      row, why = parse_row(raw)
      if why is None:
        if row['step'] <= step:
          keep.append(raw + b'\n')
      elif raw.strip():
        rejected.append(raw + b'\n')
        bad.append(f'line {n} ({why})')
    if torn.strip():
      row, why = parse_row(torn)
      if why is None and row['step'] <= step:  # complete but for its newline
        keep.append(torn + b'\n')
      else:
        logging.info('%s: dropped a torn last line (a run killed while writing)', self.path)
    if rejected:
      with open(self.path + '.rejected', 'ab') as f:
        f.writelines(rejected)
      more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
      _warn(f'{self.path}: {len(bad)} unreadable line(s) skipped on resume: '
            f'{", ".join(bad[:5])}{more}; they are kept in {self.path}.rejected')
    tmp = self.path + '.tmp'
    with open(tmp, 'wb') as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'time': time.time()}
    for k, v in metrics.items():
      if isinstance(v, (list, tuple)):
        row[k] = [_scalar(x) for x in v]
      else:
        s = _scalar(v)
        row[k] = s if s is not None else (v if isinstance(v, str) else None)
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps(row) + '\n')
    except (OSError, TypeError, ValueError) as e:
      if not self._write_failed:  # once: a full disk would repeat it every step
        _warn(f'{self.path}: could not append the metrics of step {step} ({e}); training goes on')
      self._write_failed = True
    if self._tb is not None:
      for k, v in row.items():
        if k in ('step', 'time'):
          continue
        if isinstance(v, list):
          for i, x in enumerate(v):
            if x is not None:
              self._tb.add_scalar(f'{k}/{i}', x, step)
        elif isinstance(v, float):
          self._tb.add_scalar(k, v, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _warn(msg: str) -> None:
  """A warning that is seen whatever the absl verbosity (and recorded in the absl log)."""
  warnings.warn(msg, MetricsLogWarning, stacklevel=3)
  logging.warning('%s', msg)


class MetricsLogWarning(UserWarning):
  """metrics.jsonl could not be read or written as expected (the run goes on)."""


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Progress:
  """Prints a progress line every `every_s` seconds: step, steps/s, ETA, loss, last EM."""

  def __init__(self, total_steps: int, every_s: float, start_step: int = 0, enabled: bool = True):
    self.total = total_steps
    self.every_s = every_s
    self.enabled = enabled
    self._t0 = time.perf_counter()
    self._s0 = start_step
    self._last = -math.inf

  def maybe_report(self, step: int, loss: Optional[float], last_em: Optional[float],
                   force: bool = False):
    now = time.perf_counter()
    if not self.enabled or (not force and now - self._last < self.every_s):
      return None
    self._last = now
    done = step - self._s0
    rate = done / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    em = '-' if last_em is None else f'{100 * last_em:.1f}%'
    loss_s = '-' if loss is None else f'{loss:.4f}'  # None until the first logged step
    line = (f'step {step}/{self.total}  {rate:.2f} steps/s  ETA {format_duration(eta)}  '
            f'loss {loss_s}  val EM {em}  elapsed {format_duration(now - self._t0)}')
    print(line, flush=True)
    return line
