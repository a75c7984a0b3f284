"""One training process per workdir: `hold(workdir)` takes `<workdir>/run.lock` for the run's
duration, and a second process on the same workdir (a command launched twice, two sweeps over one
sweep dir) stops at once with WorkdirBusyError naming the holder, instead of both writing the
same checkpoints and metrics.

The lock is an flock(2) on an open file: the kernel drops it when the holder exits, however it
exits (crash, kill -9, power loss of a local disk), so there is never a stale lock to clear by
hand. The file itself stays (removing a lock file races with the next process opening it),
except where the run created the workdir and failed before writing anything else: then the
workdir goes too, so a typo'd command leaves nothing behind.
Without fcntl (not POSIX) there is no lock; on a network filesystem it is as good as that
filesystem's flock. Imports nothing heavy: the sweep runner asks `holder()` before launching.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Iterator, Optional

try:
  import fcntl
except ImportError:  # not POSIX: no locking
  fcntl = None

LOCK_NAME = 'run.lock'
BUSY_EXIT = 4  # the training command's exit status when its workdir is busy
_RETRY_S = 0.5  # holder()'s probe holds the lock for microseconds: a lock taken that long is real


class WorkdirBusyError(RuntimeError):
  """Another process is training in this workdir."""


def _owner(f) -> str:
  f.seek(0)
  text = f.read().strip()
  return text or 'a process that has not written its name yet'


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock until the block ends; WorkdirBusyError if another process has it."""
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  if fcntl is None:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  with open(path, 'a+', errors='replace') as f:
    deadline = time.monotonic() + _RETRY_S
    while True:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() < deadline:
          time.sleep(0.05)
          continue
      raise WorkdirBusyError(
          f'workdir {workdir} is in use by another training process ({_owner(f)}). Wait for it '
          'to finish (rerunning the same command then resumes or skips it), stop it, or choose '
          'another --workdir.') from None
    try:
      f.seek(0)
      f.truncate()
      f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
      f.flush()
      yield
    except BaseException:
      # A run that failed before writing anything (a bad config, say) leaves no directory that
      # it created itself: a typo'd command does not leave an empty run behind.
      if created and os.listdir(workdir) == [LOCK_NAME]:
        os.remove(path)
        os.rmdir(workdir)
      raise
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def holder(workdir: str) -> Optional[str]:
  """Who holds the workdir's lock ('pid N on HOST'), or None when nobody does."""
  path = os.path.join(workdir, LOCK_NAME)
  if fcntl is None or not os.path.exists(path):
    return None
  with open(path, errors='replace') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _owner(f)
    fcntl.flock(f, fcntl.LOCK_UN)
  return None
