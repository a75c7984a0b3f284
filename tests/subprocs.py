"""Subprocesses started by tests, killed by conftest's autouse `_reap` when their test ends.

Its own module, imported as `tests.subprocs` everywhere: pytest loads conftest.py as `conftest`,
while the tests import it as `tests.conftest`, so a list kept there would exist twice.
"""
from __future__ import annotations

import subprocess

_STARTED: list[subprocess.Popen] = []


def track(proc: subprocess.Popen) -> subprocess.Popen:
  """Registers a started process (one xdist worker runs its tests one at a time)."""
  _STARTED.append(proc)
  return proc


def reap() -> None:
  while _STARTED:
    p = _STARTED.pop()
    if p.poll() is None:
      p.kill()
      p.wait()
