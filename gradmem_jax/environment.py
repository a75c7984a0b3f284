"""Where a run ran: the machine, its instruction set and the software, one record per session.

The same config and seed give the same run bit for bit on one machine with the same CPUs, but
not across machines, nor with another number of usable CPUs: XLA compiles for the CPU it runs on
(vector width, fused multiply-add) and sizes its thread pools from the CPUs the process may use
(a sweep with --workers=2 pins each point to its share), and both change float rounding in the
last bits, which training amplifies (WORKSPACE.md section 6 measured it on the KV claims runs).
So each start of a run (the first, and every resume, possibly on another machine) appends
`describe()` to <workdir>/environment.jsonl, and results.json keeps the finishing session's. Nothing here may fail a run: a field that cannot be read is None. JAX is
imported only to describe a live process: the report tools read these records without it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Optional

ENVIRONMENT_FILE = 'environment.jsonl'

# CPU flags that change what XLA:CPU emits (vector width, FMA, matrix units); /proc/cpuinfo names.
ISA_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_fp16',
             'avx512_vnni', 'amx_bf16', 'amx_tile', 'asimd', 'sve')
_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_info(cpuinfo: str = '/proc/cpuinfo') -> tuple[Optional[str], list[str]]:
  """(model name, the ISA_FLAGS it has) from a Linux cpuinfo file; (platform's name, []) where
  there is none (macOS, Windows)."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return platform.processor() or None, []
  model, flags = None, set()
  for line in text.splitlines():
    key, _, value = line.partition(':')
    key = key.strip()
    if key in ('model name', 'Processor') and model is None:
      model = value.strip() or None
    elif key in ('flags', 'Features') and not flags:  # x86 / ARM; the first CPU's
      flags = set(value.split())
  return model or platform.processor() or None, [f for f in ISA_FLAGS if f in flags]


def usable_cpus() -> Optional[int]:
  """How many CPUs this process may run on (its affinity; XLA:CPU sizes its thread pools from
  it), or None where the OS does not say."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return None


def _version(package: str) -> Optional[str]:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def git_commit(repo: str = _REPO) -> tuple[Optional[str], Optional[bool]]:
  """(HEAD's commit, whether tracked files differ from it) of the checkout this code runs from,
  or (None, None) outside a git checkout or without git."""
  if not os.path.exists(os.path.join(repo, '.git')):  # an installed copy: not the checkout's
    return None, None

  # Not GIT_DIR / GIT_WORK_TREE of the caller's environment (they would name another repo), and
  # no optional locks: `git status` must not take .git/index while the user commits.
  env = {k: v for k, v in os.environ.items() if k not in ('GIT_DIR', 'GIT_WORK_TREE')}

  def git(*args):
    return subprocess.run(['git', '--no-optional-locks', '-C', repo, *args], capture_output=True,
                          text=True, errors='replace', timeout=10, check=True, env=env).stdout
  try:
    commit = git('rev-parse', 'HEAD').strip()
    dirty = bool(git('status', '--porcelain', '--untracked-files=no').strip())
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit or None, dirty


def describe() -> dict:
  """The machine and software of this process (JSON-serialisable). In a multi-host run, of the
  host that calls it (`record` runs on process 0 only)."""
  import jax  # here, so that the report tools can read environment files without JAX
  model, isa = cpu_info()
  try:
    devices = jax.devices()
    backend, kind = jax.default_backend(), devices[0].device_kind
  except RuntimeError:  # no backend (should not happen inside a run)
    devices, backend, kind = [], None, None
  commit, dirty = git_commit()
  return {
      'time': time.time(), 'platform': backend, 'device_kind': kind,
      'device_count': len(devices), 'process_count': jax.process_count(),
      'cpu_model': model, 'cpu_isa': isa, 'cpu_count': os.cpu_count(),
      'cpus_usable': usable_cpus(),
      'os': platform.platform(), 'python': platform.python_version(),
      'packages': {p: _version(p) for p in _PACKAGES},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'git_commit': commit, 'git_dirty': dirty,
  }


def record(workdir: str, start_step: int) -> dict:
  """Appends this session's `describe()` with the step it starts at to the workdir's
  ENVIRONMENT_FILE and returns it. Never fails the run: a description that raises is recorded as
  the error, and a file it cannot write only warns."""
  try:
    env = {'start_step': int(start_step), **describe()}
  except Exception as e:  # noqa: BLE001 - a record of where it ran is not worth a run
    env = {'start_step': int(start_step), 'time': time.time(),
           'error': f'{type(e).__name__}: {e}'}
  try:
    with open(os.path.join(workdir, ENVIRONMENT_FILE), 'a') as f:
      f.write(json.dumps(env, sort_keys=True) + '\n')
  except OSError as e:
    print(f'warning: could not record the environment in {workdir}: {e}', file=sys.stderr)
  return env


# The widest first: what a one-word summary of a CPU names.
_ISA_ORDER = ('amx_tile', 'avx512f', 'avx2', 'avx', 'sse4_2', 'sve', 'asimd')


def machine(env: dict) -> str:
  """A one-line name of where a session ran, for tables: the device kind on an accelerator; on
  a CPU its model, widest vector ISA and the CPUs the process could use (both change the
  numbers); and XLA_FLAGS when set (they may narrow the ISA), e.g. 'AMD EPYC (avx512f), 2 CPUs'."""
  if env.get('error') and not env.get('platform'):
    return 'not recorded (' + env['error'] + ')'
  if env.get('platform') not in (None, 'cpu'):
    name = f"{env.get('device_count') or '?'} x {env.get('device_kind') or env['platform']}"
  else:
    isa = next((f for f in _ISA_ORDER if f in (env.get('cpu_isa') or ())), None)
    name = (env.get('cpu_model') or 'unknown CPU') + (f' ({isa})' if isa else '')
    cpus = env.get('cpus_usable') or env.get('cpu_count')
    name += f', {cpus} CPU{"s" if cpus != 1 else ""}' if cpus else ''
  if env.get('xla_flags'):
    name += f"; XLA_FLAGS={env['xla_flags']}"
  return name


def read(workdir: str) -> list[dict]:
  """The sessions recorded in a workdir (oldest first). Lines that are not a JSON object (a line
  torn by a crash) are skipped; an unreadable file reads as no sessions."""
  path = os.path.join(workdir, ENVIRONMENT_FILE)
  rows = []
  try:
    with open(path, errors='replace') as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict):
          rows.append(row)
  except OSError:
    return []
  return rows


def resume_note(previous: list[dict], current: dict) -> Optional[str]:
  """A warning when a run resumes somewhere other than where its last session ran (another
  machine name, which includes the CPU count, or other jax/jaxlib versions): it continues
  correctly, but not bit for bit as the uninterrupted run would have. None otherwise, and for a
  run's first session."""
  if not previous or current.get('start_step') == 0:
    return None
  last = previous[-1]
  if last.get('error') or current.get('error'):  # a side not known: nothing to compare
    return None
  versions = lambda e: {p: (e.get('packages') or {}).get(p) for p in ('jax', 'jaxlib')}
  was, now = machine(last), machine(current)
  if was == now and versions(last) == versions(current):
    return None
  what = (f'{was} -> {now}' if was != now else
          f'jax/jaxlib {versions(last)} -> {versions(current)}')
  return (f'resuming at step {current.get("start_step")} elsewhere than the last session ran '
          f'({what}): the run continues correctly, but its numbers part from those an '
          'uninterrupted run would have had (float rounding depends on the machine, its CPU count '
          'and the software)')


def session_machines(sessions: list[dict]) -> list[str]:
  """`machine` of each session in order, a machine repeated by consecutive sessions named once
  (A, A, B, A -> A, B, A: where a run finished matters most). A record that does not start at
  step 0 is preceded by 'not recorded' (the run began before environment.jsonl existed)."""
  names = [machine(e) for e in sessions]
  if sessions and sessions[0].get('start_step') != 0:
    names.insert(0, 'not recorded')
  return [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
