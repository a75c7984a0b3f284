"""Sweeps: grids or lists of config overrides, one resumable run (and workdir) per point.

A sweep file (configs/sweeps/<name>.py) defines `get_sweep(arg) -> Sweep`. Each point is a dict
of config overrides (dotted keys or the config file's aliases). The runner gives every point its
own workdir `<sweep_dir>/<slug>`; a point whose workdir holds results.json is finished and skipped,
an unfinished one resumes from its checkpoint. Points run in fresh processes (one configuration
per process), one after another or several at once (`workers`: the CPUs split between them, or a
GPU each), or `--dry_run` prints one launch command per point for a cluster or TPU-pod queue.
"""
from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Iterable, Optional, Sequence

from gradmem_jax import config_lib, environment, workdir_lock

Point = dict


@dataclasses.dataclass
class Sweep:
  name: str
  points: list                      # list[dict[str, Any]] of overrides
  base: str = ''                    # presets/overrides applied before every point (config arg)
  description: str = ''
  figures: tuple = ()               # figure kinds for the report: em_vs_n, em_vs_memory, ...
  # Curriculum: point slug -> the slug of the point whose best parameters it starts from
  # (train.init_from=<sweep_dir>/<source>; fresh optimizer). A source runs before its users
  # (list it earlier); the init is not part of the point's slug.
  init_from: dict = dataclasses.field(default_factory=dict)


def select(sweep: Sweep, pattern: str) -> Sweep:
  """The sweep's points whose slug matches the regular expression `pattern` (re.search), with
  their curriculum sources kept as they are: a point whose source is left out runs only once that
  source has finished (in this sweep dir). A pattern that matches nothing is an error."""
  try:
    rx = re.compile(pattern)
  except re.error as e:
    raise ValueError(f'--only={pattern!r} is not a regular expression: {e}') from None
  points = [p for p in sweep.points if rx.search(slug(p))]
  if not points:
    raise ValueError(f'--only={pattern!r} matches none of the {len(sweep.points)} points of sweep '
                     f'{sweep.name!r}; e.g. {slug(sweep.points[0])!r}')
  return dataclasses.replace(sweep, points=points)


def grid(**axes: Sequence[Any]) -> list[Point]:
  """Cartesian product: grid(K=[1, 2], inner_lr=[0.1, 1.0]) -> 4 points."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def concat(*lists: Iterable[Point]) -> list[Point]:
  return [dict(p) for lst in lists for p in lst]


def with_seeds(points: Iterable[Point], seeds: Sequence[int]) -> list[Point]:
  return [dict(p, seed=s) for p in points for s in seeds]


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f'{v:g}'
  return str(v)


def slug(point: Point) -> str:
  """Directory name of a point: 'K=2,inner_lr=0.1' (stable key order as written)."""
  s = ','.join(f'{k}={_fmt(v)}' for k, v in point.items()) or 'base'
  return s.replace('/', '_').replace(' ', '')


def load_sweep(spec: str) -> Sweep:
  """`path/to/sweep.py[:arg]` -> Sweep."""
  path, _, arg = spec.partition(':')
  module = config_lib.load_module_file(path, 'sweep', 'get_sweep')
  sweep = module.get_sweep(arg or None)
  names = [slug(p) for p in sweep.points]
  dup = {n for n in names if names.count(n) > 1}
  if dup:
    raise ValueError(f'sweep {sweep.name} has duplicate points: {sorted(dup)}')
  for user, source in sweep.init_from.items():
    if user not in names or source not in names:
      missing = user if user not in names else source
      raise ValueError(f'sweep {sweep.name}: init_from names {missing!r}, which is not a point')
    if names.index(source) > names.index(user):
      raise ValueError(f'sweep {sweep.name}: {user!r} starts from {source!r}, which comes after '
                       'it; list the source first')
  return sweep


def config_arg(config_spec: str, sweep: Sweep, point: Point) -> str:
  """The --config value of one point: file:sweep base,the user's args,point overrides.

  Presets apply before overrides, and later overrides win, so the user's own `key=value`
  arguments beat the sweep's base (`:tiny,steps=6` trains 6 steps whatever the base says); the
  point's own values come last."""
  path, _, arg = config_spec.partition(':')
  parts = [p for p in (sweep.base, arg) if p]
  parts += [f'{k}={_fmt(v)}' for k, v in point.items()]
  return path + (':' + ','.join(parts) if parts else '')


# The generic training entry point: it trains whatever task and method the config names.
TRAIN_MODULE = 'experiments.train'


def point_command(config_spec: str, sweep: Sweep, point: Point, sweep_dir: str,
                  module: str = TRAIN_MODULE, python: str = 'python') -> list[str]:
  cmd = [python, '-m', module, f'--config={config_arg(config_spec, sweep, point)}',
         f'--workdir={os.path.join(sweep_dir, slug(point))}']
  source = sweep.init_from.get(slug(point))
  if source:
    cmd.append(f'--config.train.init_from={os.path.join(sweep_dir, source)}')
  return cmd


def validate_points(config_spec: str, sweep: Sweep) -> None:
  """Builds every point's config up front: a bad override fails before anything runs."""
  get_config = config_lib.load_config_module(config_spec).get_config
  for p in sweep.points:
    arg = config_arg(config_spec, sweep, p).partition(':')[2]
    try:
      get_config(arg)
    except ValueError as e:
      raise ValueError(f'sweep point {slug(p)}: {e}') from None


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'results.json'))


def has_params(workdir: str) -> bool:
  """Whether a point's parameters are there (a step directory under best/ or checkpoints/): a
  curriculum step starts from them and K extrapolation evaluates them. A point restored from an
  archive may lack them."""
  for d in ('best', 'checkpoints'):
    path = os.path.join(workdir, d)
    if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
      return True
  return False


@contextlib.contextmanager
def _sweep_dir_lock(sweep_dir: str):
  """The sweep dir's lock (sweep.json.lock): sweeps sharing a dir take turns to change it."""
  import fcntl  # POSIX; imported here so that the module imports anywhere
  os.makedirs(sweep_dir, exist_ok=True)
  with open(os.path.join(sweep_dir, 'sweep.json.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def write_manifest(sweep_dir: str, config_spec: str, sweep: Sweep) -> None:
  """Writes sweep.json. Variants of one sweep (same name and base, e.g. claims' `cpu_seed0` and
  `k1_seeds`) may share a dir: the manifest keeps the points of an earlier variant that have a
  run directory there, so the report still finds their overrides. Points never started are not
  kept (an edited sweep leaves no stale entries), nor is anything of another sweep or base. The
  read-merge-write holds a lock, so two sweeps starting together both keep their points."""
  path = os.path.join(sweep_dir, 'sweep.json')
  points = [{'slug': slug(p), 'overrides': p} for p in sweep.points]
  init_from, description = dict(sweep.init_from), sweep.description
  with _sweep_dir_lock(sweep_dir):
    old = None
    if os.path.exists(path):
      try:
        with open(path) as f:
          old = json.load(f)
      except (OSError, ValueError) as e:
        warnings.warn(f'{path} is unreadable ({e}); it is rewritten with this sweep\'s points only')
    if old and old.get('name') == sweep.name and old.get('base') == sweep.base:
      new_slugs = {p['slug'] for p in points}
      kept = [p for p in old.get('points', []) if p['slug'] not in new_slugs
              and os.path.isdir(os.path.join(sweep_dir, p['slug']))]
      if kept:
        points = kept + points
        description += f' (and {len(kept)} points of other variants run in this dir)'
      slugs = {p['slug'] for p in points}
      init_from = {**{k: v for k, v in old.get('init_from', {}).items() if k in slugs},
                   **init_from}
    manifest = {'name': sweep.name, 'description': description, 'config': config_spec,
                'base': sweep.base, 'figures': list(sweep.figures), 'init_from': init_from,
                'points': points}
    _write_json(path, manifest, tmp=f'{path}.{os.getpid()}.tmp')


# JAX's persistent compilation cache, read from the environment by every JAX process.
XLA_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'


def cache_path(xla_cache_dir: str) -> str:
  """The directory as the points' processes get it: '~' expanded, absolute ('' stays ''; a
  remote URL such as gs://bucket/cache, which jax also takes, stays as it is; file:// becomes
  the local path, which jax would not take as a URL)."""
  if xla_cache_dir.startswith('file://'):
    xla_cache_dir = xla_cache_dir[len('file://'):]
  if not xla_cache_dir or '://' in xla_cache_dir:
    return xla_cache_dir
  return os.path.abspath(os.path.expanduser(xla_cache_dir))


def point_env(xla_cache_dir: Optional[str]) -> Optional[dict]:
  """The environment of a point's process: None (this one's, unchanged) when xla_cache_dir is
  None; without JAX's compilation cache when it is ''; else with the cache in that directory, so
  that points compiling the same program (seeds of one cell, a resumed point) load it instead."""
  if xla_cache_dir is None:
    return None
  env = dict(os.environ)
  env.pop(XLA_CACHE_ENV, None)
  if xla_cache_dir:
    env[XLA_CACHE_ENV] = cache_path(xla_cache_dir)
  return env


def worker_slots(workers: int, worker_gpus: Sequence[str] = (),
                 env: Optional[dict] = None) -> list[tuple[Optional[dict], Optional[set]]]:
  """The environment and CPU set of each of `workers` parallel point processes.
  One worker: `env` as it is and no pinning (the sequential sweep). Several: the CPUs this process
  may use are split into disjoint contiguous sets, one per worker (XLA sizes its CPU thread pools
  from the affinity, so the points do not fight over cores); with fewer CPUs than workers nothing
  is pinned. worker_gpus (one entry per worker, '+' joining several GPUs) gives each worker its
  GPUs, as indices among the GPUs this process sees (its CUDA_VISIBLE_DEVICES, when set, maps
  them). Workers sharing a GPU (all of them without worker_gpus) get XLA_PYTHON_CLIENT_MEM_FRACTION
  = 0.9 / (the most workers on one of its GPUs) unless the environment sets it, since each JAX
  process would otherwise preallocate 75% of the card. (A TPU cannot be shared by processes: run
  one worker per host there.)"""
  if workers < 1:
    raise ValueError(f'workers={workers}: allowed are whole numbers >= 1')
  if worker_gpus and len(worker_gpus) != workers:
    raise ValueError(f'worker_gpus={",".join(worker_gpus)}: one entry per worker is needed '
                     f'(workers={workers}, {len(worker_gpus)} entries; leave workers out for one '
                     'worker per entry)')
  for g in worker_gpus:
    if not re.fullmatch(r'\d+(\+\d+)*', g):
      raise ValueError(f'worker_gpus entry {g!r}: allowed are GPU indices, "+" joining several '
                       '(e.g. 0,1 or 0+1,2+3)')
  if workers == 1 and not worker_gpus:
    return [(env, None)]
  base = dict(os.environ if env is None else env)
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  cpu_sets = [None] * workers
  if len(cpus) >= workers:
    per, extra = divmod(len(cpus), workers)
    start = 0
    for w in range(workers):
      n = per + (w < extra)
      cpu_sets[w] = set(cpus[start:start + n])
      start += n
  indices = [[int(x) for x in g.split('+')] for g in worker_gpus]
  restricted = 'CUDA_VISIBLE_DEVICES' in base  # '' too: no GPU at all
  seen = [d for d in base.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
  for g, idx in zip(worker_gpus, indices):
    if restricted and max(idx) >= len(seen):
      raise ValueError(f'worker_gpus entry {g!r}: this process sees {len(seen)} GPUs '
                       f'(CUDA_VISIBLE_DEVICES={base["CUDA_VISIBLE_DEVICES"]!r}); allowed are '
                       + (f'indices 0-{len(seen) - 1} among them' if seen else 'none'))
  slots = []
  for w in range(workers):
    e = dict(base)
    if worker_gpus:
      e['CUDA_VISIBLE_DEVICES'] = ','.join(seen[d] if restricted else str(d) for d in indices[w])
      sharing = max(sum(d in other for other in indices) for d in indices[w])
    else:
      sharing = workers
    if sharing > 1 and 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in base:
      e['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / sharing:.2f}'
    slots.append((e, cpu_sets[w]))
  return slots


def describe_slots(slots) -> str:
  """One line: each worker's GPUs, accelerator memory share and CPUs."""
  parts = []
  for w, (e, cpus) in enumerate(slots):
    bits = [f'{k}={e[k]}' for k in ('CUDA_VISIBLE_DEVICES', 'XLA_PYTHON_CLIENT_MEM_FRACTION')
            if e is not None and k in e]
    bits.append(f'CPUs {",".join(map(str, sorted(cpus)))}' if cpus else 'all CPUs')
    parts.append(f'worker {w}: ' + ' '.join(bits))
  line = f'{len(slots)} workers: ' + '; '.join(parts)
  if any(cpus for _, cpus in slots):
    line += ('. A point\'s numbers depend on the CPUs it gets: it repeats a run bit for bit only '
             'with as many CPUs on the same kind of machine')
  return line


# Pins itself to the CPUs in argv[1], then becomes the command that follows (a wrapper rather than
# a preexec_fn, which is unsafe in a process with threads and hides its errors).
_PIN_CODE = ('import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")}); '
             'os.execv(sys.argv[2], sys.argv[2:])')


def _pinned(cmd: list, cpus: Optional[set]) -> list:
  """cmd (whose first element is an absolute path), run on `cpus` only (None: as it is)."""
  if not cpus:
    return cmd
  return [sys.executable, '-c', _PIN_CODE, ','.join(map(str, sorted(cpus)))] + list(cmd)


def run_sweep(config_spec: str, sweep: Sweep, sweep_dir: str, *, dry_run: bool = False,
              module: str = TRAIN_MODULE, log=print, cwd: Optional[str] = None,
              xla_cache_dir: Optional[str] = None,
              eval_ks: Sequence[int] = (), workers: int = 1,
              worker_gpus: Sequence[str] = ()) -> list[dict]:
  """Runs the unfinished points, each in a fresh process, `workers` at a time (see worker_slots),
  in the sweep's order: a point is looked at when a worker is free to take it. A point whose
  curriculum source is still to run here (or is training in another process while this sweep has
  points running) waits for it, while the free workers take the points after it. Returns
  per-point status dicts, in the sweep's order. xla_cache_dir: see point_env (the dry run's
  commands then start with the variable, or with `env -u` of it when the cache is off). eval_ks:
  K_eval values each point that finishes here is evaluated with at once, in a process of its own
  on the same worker (evaluate_point), before that worker takes another point (the others go on):
  a sweep cut short keeps the K extrapolation of the points it finished, and this process never
  takes an accelerator from the points' processes. Stopped by Ctrl-C, or by SIGTERM or SIGHUP
  when called from the main thread with their default action set (under nohup, SIGHUP stays
  ignored), the sweep stops the processes it started (their points resume from their
  checkpoints)."""
  env = point_env(xla_cache_dir)
  slots = worker_slots(workers, worker_gpus, env)
  write_manifest(sweep_dir, config_spec, sweep)
  todo = [p for p in sweep.points if not is_finished(os.path.join(sweep_dir, slug(p)))]
  if dry_run:
    prefix = ''
    if env is not None:
      prefix = (f'{XLA_CACHE_ENV}={shlex.quote(env[XLA_CACHE_ENV])} ' if XLA_CACHE_ENV in env
                else f'env -u {XLA_CACHE_ENV} ')
    status = []
    if len(slots) > 1:  # the commands as one worker would run them; the split they would get
      log('# ' + describe_slots(slots))
    for p in sweep.points:
      cmd = point_command(config_spec, sweep, p, sweep_dir, module)
      log(prefix + ' '.join(shlex.quote(c) for c in cmd))
      status.append({'slug': slug(p), 'status': 'dry_run'})
    return status
  n = len(sweep.points)
  slugs = [slug(p) for p in sweep.points]
  status: list = [None] * n
  waiting = list(range(n))   # not yet launched or decided, in the sweep's order
  running = {}               # worker -> [point index, process, its log file, 'train' | 'eval']
  t_sweep = time.perf_counter()
  n_done = 0
  if len(slots) > 1:
    log(describe_slots(slots))

  def head(i: int) -> str:
    return f'[{i + 1}/{n}] {slugs[i]}'

  def left_to(i: int, holder: str, prefix: str) -> None:
    log(f'{prefix}{slugs[i]}: not run, another process is training it ({holder}); '
        'rerun the sweep after it ends')
    status[i] = {'slug': slugs[i], 'status': f'busy ({holder})'}

  def blocked(i: int, source: str) -> None:
    log(f'{head(i)}: not run, its curriculum source {source} did not finish')
    status[i] = {'slug': slugs[i], 'status': f'blocked (source {source} unfinished)'}

  def may_finish(source: str) -> bool:  # the source may still finish while this sweep runs
    if any(slugs[j] == source for j in waiting) or any(
        slugs[job[0]] == source for job in running.values()):
      return True
    return bool(running) and bool(workdir_lock.holder(os.path.join(sweep_dir, source)))

  def start(w: int, i: int, cmd: list, phase: str) -> None:
    wd = os.path.join(sweep_dir, slugs[i])
    os.makedirs(wd, exist_ok=True)
    out = open(os.path.join(wd, 'stdout.log'), 'a')
    try:
      proc = subprocess.Popen(_pinned(cmd, slots[w][1]), stdout=out, stderr=subprocess.STDOUT,
                              cwd=cwd, env=slots[w][0])
    except BaseException:
      out.close()
      raise
    running[w] = [i, proc, out, phase]

  def launch_ready() -> None:
    for i in list(waiting):
      free = [w for w in range(len(slots)) if w not in running]
      if not free:
        return  # a point is looked at only when a worker could take it
      p = sweep.points[i]
      wd = os.path.join(sweep_dir, slugs[i])
      if is_finished(wd):
        log(f'{head(i)}: finished, skipped')
        status[i] = {'slug': slugs[i], 'status': 'skipped'}
        waiting.remove(i)
        continue
      source = sweep.init_from.get(slugs[i])
      if _complete_steps(os.path.join(wd, 'checkpoints')):
        source = None  # it resumes from its own checkpoint: init_from is not read
      if source and not is_finished(os.path.join(sweep_dir, source)):
        if may_finish(source):
          continue  # wait for it, and let a free worker take the next points
        blocked(i, source)
        waiting.remove(i)
        continue
      if source and not has_params(os.path.join(sweep_dir, source)):
        log(f'{head(i)}: not run, its curriculum source {source} has no parameters (best/ or '
            'checkpoints/) here: it was restored from an archive that did not keep them '
            '(experiments.archive keeps those of curriculum chains by default)')
        status[i] = {'slug': slugs[i], 'status': f'blocked (source {source} has no parameters)'}
        waiting.remove(i)
        continue
      busy = workdir_lock.holder(wd)
      if busy:
        left_to(i, busy, f'[{i + 1}/{n}] ')
        waiting.remove(i)
        continue
      w = free[0]
      elapsed = time.perf_counter() - t_sweep
      eta = ''
      if n_done:
        eta = f', ETA {(len(todo) - n_done) * elapsed / n_done / 60:.1f} min'
      on = f' on worker {w}' if len(slots) > 1 else ''
      log(f'{head(i)}: running{on} ({n_done}/{len(todo)} done{eta})')
      grown = [u for u, src in sweep.init_from.items() if src == slugs[i] and (
          is_finished(os.path.join(sweep_dir, u))
          or _complete_steps(os.path.join(sweep_dir, u, 'checkpoints')))]
      if grown:  # a rerun of a source: its users grew from the run it replaces
        log(f'  note: {", ".join(grown)} started from an earlier run of this point and will not '
            'grow from this one; run them again too (--only), or the claims report names the '
            'chain as one that mixes runs')
      start(w, i, point_command(config_spec, sweep, p, sweep_dir, module, python=sys.executable),
            'train')
      waiting.remove(i)

  def finish(w: int) -> None:
    nonlocal n_done
    i, proc, out, phase = running.pop(w)
    out.close()
    name = slugs[i]
    wd = os.path.join(sweep_dir, name)
    rc = proc.returncode
    if phase == 'eval':
      _log_evaluation(wd, eval_ks, rc, log)
      return
    if rc == workdir_lock.BUSY_EXIT:  # another process took the workdir after holder() looked
      left_to(i, workdir_lock.holder(wd) or 'it has finished since', '  ')
      return
    n_done += 1
    ok = rc == 0 and is_finished(wd)
    status[i] = {'slug': name, 'status': 'ok' if ok else f'failed (exit {rc})'}
    if not ok:
      log(f'  {name} failed with exit code {rc}; see {wd}/stdout.log')
      return
    with open(os.path.join(wd, 'results.json')) as f:
      r = json.load(f)
    em = r.get('best', {}).get('em')
    log(f'  {name}: best EM {100 * em:.2f}% in {r["wall_time_s"] / 60:.1f} min'
        if em is not None else f'  {name}: done')
    if eval_ks:  # on this worker's devices and CPUs, before it takes another point
      start(w, i, _eval_command(wd, eval_ks), 'eval')

  stopped_by = []  # the signal that asked this sweep to stop (the wait loop acts on it)

  def stop(signum, frame):
    stopped_by.append(signum)

  def check_stopped() -> None:
    if stopped_by:
      raise SystemExit(f'sweep stopped by signal {stopped_by[0]}')

  handlers = {}
  try:
    # SIGTERM and SIGHUP stop the sweep and its points, where their default action (death) is
    # still set: a sweep under nohup keeps ignoring SIGHUP. Only the main thread can set them.
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, getattr(signal, 'SIGHUP', None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
          handlers[sig] = signal.SIG_DFL
          signal.signal(sig, stop)
    while True:
      launch_ready()
      if not running:
        break
      done, since = [], time.monotonic()
      while not done:
        check_stopped()
        done = [w for w, job in running.items() if job[1].poll() is not None]
        if not done:
          time.sleep(0.2)
          if (waiting and len(running) < len(slots) and time.monotonic() - since > 5):
            break  # a source another process trains may have finished: look again
      for w in sorted(done):
        finish(w)
      check_stopped()
  finally:  # stopped: the points' processes stop too (they resume from their checkpoints)
    jobs = list(running.values())
    for _, proc, _, _ in jobs:
      if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + 60
    for _, proc, out, _ in jobs:
      try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      out.close()
    for sig, old in handlers.items():
      signal.signal(sig, old)
  for i in waiting:  # their sources were blocked or busy (or wait for them): none can run now
    blocked(i, sweep.init_from.get(slugs[i]))
  return status


_EVAL_CODE = ('import sys; from gradmem_jax import sweeps; '
              'sweeps.evaluate_point(sys.argv[1], [int(k) for k in sys.argv[2].split(",")])')


def _eval_command(wd: str, ks: Sequence[int]) -> list:
  """evaluate_point of a point that has just finished, as a command of its own (its output goes
  to the point's stdout.log)."""
  return [sys.executable, '-c', _EVAL_CODE, os.path.abspath(wd), ','.join(str(int(k)) for k in ks)]


def _log_evaluation(wd: str, ks: Sequence[int], rc: int, log) -> None:
  """A failure is logged, not raised: a later evaluate_points (experiments.sweep calls it at its
  end) tries again."""
  name = os.path.basename(os.path.normpath(wd))
  if rc != 0:
    log(f'  {name}: K_eval evaluation failed (exit {rc}; see {wd}/stdout.log); left for a later '
        'evaluation of the sweep\'s points')
  elif os.path.exists(os.path.join(wd, 'k_extrapolation.json')):
    log(f'  {name}: evaluated with K_eval={[int(k) for k in ks]}')


def evaluate_points(sweep: Sweep, sweep_dir: str, ks: Sequence[int], log=print) -> list[str]:
  """evaluate_point for every finished point of the sweep, in this process. A point whose
  evaluation raises is logged and left (the others still run); returns those points' names."""
  failed = []
  for p in sweep.points:
    wd = os.path.join(sweep_dir, slug(p))
    if is_finished(wd):
      try:
        evaluate_point(wd, ks, log=log)
      except Exception as e:  # pylint: disable=broad-except  (reported, and the caller fails)
        log(f'  {slug(p)}: K_eval evaluation failed: {type(e).__name__}: {e}')
        failed.append(slug(p))
  return failed


def evaluate_point(wd: str, ks: Sequence[int], log=print) -> None:
  """k_extrapolation.json (one row per K_eval) of a finished point whose method evaluates with
  another K than it trained with; a point that has one is left as it is."""
  from gradmem_jax.memory import METHODS, memory_config_from
  from gradmem_jax.training import evaluate
  name = os.path.basename(os.path.normpath(wd))
  out = os.path.join(wd, 'k_extrapolation.json')
  if os.path.exists(out):
    return
  if not has_params(wd):
    log(f'  {name}: not evaluated with K_eval, its parameters are not here (restored from '
        'an archive without them)')
    return
  method = memory_config_from(evaluate.load_run_config(wd).memory).method
  if len(ks) > 1 and not METHODS.get(method).capabilities.k_extrapolation:
    log(f'  {name}: not evaluated with K_eval, its method ({method}) has no test-time K')
    return
  rows = evaluate.evaluate_run(wd, ks)
  _write_json(out, rows, tmp=f'{out}.{os.getpid()}.tmp')  # sweeps sharing a dir may race here
  log(f'  {name}: evaluated with K_eval={list(ks)}')


def collect_finished(sweep_dir: str) -> list[dict]:
  """`collect`, refusing a sweep directory with no finished run (the report tools' start)."""
  runs = collect(sweep_dir)
  if not runs:
    raise SystemExit(f'no finished runs (results.json) under {sweep_dir}')
  return runs


def _config_init_from(run_dir: str) -> Optional[dict]:
  """{'path', 'part'} of a run's train.init_from from its config.json, else config.prev.json
  (a resume launched without init_from replaced config.json), or None: a run that did not grow
  from another (or whose configs are unreadable)."""
  for name in ('config.json', 'config.prev.json'):
    try:
      with open(os.path.join(run_dir, name)) as f:
        train = json.load(f).get('train') or {}
      path = train.get('init_from')
    except (OSError, ValueError, AttributeError):
      continue
    if path:
      return {'path': path, 'part': train.get('init_from_part') or None}
  return None


def collect(sweep_dir: str) -> list[dict]:
  """Every point's results.json with its overrides (from sweep.json, else config.json), its
  K extrapolation and 'machines': where its sessions ran, in order
  (environment.session_machines; empty for runs from before environment.jsonl)."""
  manifest_path = os.path.join(sweep_dir, 'sweep.json')
  overrides, chains = {}, {}
  if os.path.exists(manifest_path):
    manifest = json.load(open(manifest_path))
    for p in manifest['points']:
      overrides[p['slug']] = p['overrides']
    chains = manifest.get('init_from') or {}
  rows = []
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name, 'results.json')
    if not os.path.exists(path):
      continue
    r = json.load(open(path))
    r['slug'] = name
    r['overrides'] = overrides.get(name, {})
    kx = os.path.join(sweep_dir, name, 'k_extrapolation.json')
    if os.path.exists(kx):
      r['k_extrapolation'] = json.load(open(kx))
    r['machines'] = environment.session_machines(
        environment.read(os.path.join(sweep_dir, name)))
    if r.get('init_from') is None:  # a run from before results.json named it: its config does,
      r['init_from'] = _config_init_from(os.path.join(sweep_dir, name)) or (  # else the sweep's
          {'path': chains[name], 'part': None} if name in chains else None)  # (the point's name:
      # the same in the sweep dir and its archives)
    rows.append(r)
  return rows


def in_progress(sweep_dir: str) -> list[dict]:
  """The unfinished points of a sweep dir or archive that a sweep would resume rather than start:
  {'slug', 'overrides' (from sweep.json), 'step' (the step it resumes from: an archived
  snapshot's, else, in a run directory (it holds the run's lock file), the newest complete
  checkpoint's), 'max_steps' (the snapshot's, else
  config.json's, else None)}."""
  manifest = _read_manifest(os.path.join(sweep_dir, 'sweep.json')) or {}
  overrides = {p['slug']: p['overrides'] for p in manifest.get('points', [])}
  rows = []
  for name in sorted(os.listdir(sweep_dir)):
    wd = os.path.join(sweep_dir, name)
    if not os.path.isdir(wd) or is_finished(wd):
      continue
    step = unfinished_step(wd)
    if step is None and os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME)):
      steps = _complete_steps(os.path.join(wd, 'checkpoints'))  # a live run dir (an archive
      step = steps[0] if steps else None                        # copies no lock file)
    if step is None:
      continue
    max_steps = None
    if os.path.exists(os.path.join(wd, UNFINISHED_MARKER)):
      with open(os.path.join(wd, UNFINISHED_MARKER)) as f:
        max_steps = json.load(f).get('max_steps')
    if max_steps is None:
      max_steps = _config_max_steps(wd)
    rows.append({'slug': name, 'overrides': overrides.get(name, {}), 'step': step,
                 'max_steps': max_steps})
  return rows


# What a report needs of a finished point: no checkpoints, best parameters or TensorBoard events.
# results.json last: it marks a point finished, so an archive cut short leaves none that looks
# finished without the rest.
ARCHIVED_FILES = ('config.json', 'metrics.jsonl', 'k_extrapolation.json', 'stdout.log',
                  environment.ENVIRONMENT_FILE, 'results.json')


def _write_json(path: str, obj: Any, tmp: Optional[str] = None) -> None:
  """Writes a whole file or none: to a temporary name, then renamed."""
  tmp = tmp or path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _copy_atomic(src: str, dst: str) -> None:
  shutil.copyfile(src, dst + '.tmp')
  os.replace(dst + '.tmp', dst)


def _copy_tree_atomic(src: str, dst: str) -> None:
  """Replaces the directory `dst` by a copy of `src`: copied under a temporary name, then
  swapped in by renames, so `dst` is never a half-written copy (a crash between the renames
  leaves `dst`.old, which the next call puts back before anything else)."""
  tmp, old = dst + '.tmp', dst + '.old'
  if os.path.isdir(old) and not os.path.isdir(dst):
    os.replace(old, dst)
  for d in (tmp, old):
    if os.path.isdir(d):
      shutil.rmtree(d)
  shutil.copytree(src, tmp)
  if os.path.isdir(dst):
    os.replace(dst, old)
  os.replace(tmp, dst)
  shutil.rmtree(old, ignore_errors=True)


def _remove_tree(path: str) -> None:
  """Removes a directory by renaming it first, so it is gone or whole, never half removed."""
  if os.path.isdir(path):
    gone = path + '.old'
    if os.path.isdir(gone):
      shutil.rmtree(gone)
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _same_file(a: str, b: str) -> bool:
  return os.path.exists(a) and os.path.exists(b) and filecmp.cmp(a, b, shallow=False)


# Which finished points' best parameters (best/, the best validation step: about 0.6 MB for the
# default CPU model) an archive keeps: every point of a curriculum chain (a point another starts
# from, or one that starts from another: a fuller variant of the sweep may continue from it, as
# claims' `cpu` continues the N = 4 points of `k2_seeds` at N = 8), every point's, or none.
ARCHIVE_BEST = ('curriculum', 'all', 'none')


def _read_manifest(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); expected a sweep.json that '
                     'experiments.sweep wrote') from None


def archive(sweep_dir: str, out_dir: str, best: str = 'curriculum') -> list[str]:
  """Copies what the reports read of every finished point (ARCHIVED_FILES) and sweep.json from
  `sweep_dir` to `out_dir`, a few hundred kB per point, small enough to commit: `collect`, the
  sweep report and `experiments.claims` read `out_dir` as they read the sweep dir, so results
  outlive the machine whose run directories (with their checkpoints) they came from. With
  `best` (ARCHIVE_BEST) also the best parameters (best/, about 0.6 MB more for the default CPU
  model) of the points of a curriculum chain in the merged sweep.json ('curriculum', the
  default), of every point ('all') or of none: `restore` brings them back, so a later session
  can start the next step of a chain. An archived best/ of a point that has not run again is
  kept unless `best` is 'none'. Unfinished points are not copied here (no results.json yet):
  `archive_unfinished` snapshots them, and a snapshot left from before a point finished is
  removed when it is archived finished. A point already in `out_dir` is replaced by the sweep
  dir's copy (archived files the sweep dir's point lacks are removed);
  points in `out_dir` that `sweep_dir` lacks are kept, and sweep.json's points and curriculum
  sources become the union (a later session's sweep dir may hold other points of the same
  sweep). Refused: an `out_dir` holding another sweep's archive (other name or base), or any
  archive when `sweep_dir` has no sweep.json to check that against, and `out_dir` being
  `sweep_dir` itself. Each file is written to a temporary name and renamed, results.json last
  within a point and the manifest before the points, so an interrupted archive leaves whole
  files and no point that looks finished without its metrics. Returns the archived points."""
  if best not in ARCHIVE_BEST:
    raise ValueError(f'archive: best={best!r}; allowed: {", ".join(ARCHIVE_BEST)}')
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f'--sweep_dir {sweep_dir!r}: no such directory')
  if os.path.realpath(sweep_dir) == os.path.realpath(out_dir):
    raise ValueError(f'archive: the output {out_dir!r} is the sweep dir itself')
  manifest = os.path.join(sweep_dir, 'sweep.json')
  out_manifest = os.path.join(out_dir, 'sweep.json')
  new, old = _read_manifest(manifest), _read_manifest(out_manifest)
  if old is not None and new is None:
    raise ValueError(f'archive: {sweep_dir!r} has no sweep.json, so its points cannot be checked '
                     f'against the archive of sweep {old.get("name")!r} in {out_dir!r}')
  if new and old and (old.get('name'), old.get('base')) != (new.get('name'), new.get('base')):
    raise ValueError(
        f'archive: {out_dir!r} holds sweep {old.get("name")!r} (base {old.get("base")!r}), not '
        f'{new.get("name")!r} (base {new.get("base")!r}); archive into another directory')
  os.makedirs(out_dir, exist_ok=True)
  if new:
    if old:
      slugs = {p['slug'] for p in new['points']}
      new['points'] = [p for p in old.get('points', []) if p['slug'] not in slugs] + new['points']
      new['init_from'] = {**old.get('init_from', {}), **new.get('init_from', {})}
    _write_json(out_manifest, new)
  chains = (new or {}).get('init_from', {})
  in_chain = set(chains) | set(chains.values())
  names = []
  for name in sorted(os.listdir(sweep_dir)):
    src = os.path.join(sweep_dir, name)
    if not is_finished(src):
      continue
    dst = os.path.join(out_dir, name)
    os.makedirs(dst, exist_ok=True)
    # best/ before results.json. An archived best/ stays with its own run: it goes when the
    # point ran again (another results.json) or when none is asked for.
    src_best, dst_best = os.path.join(src, 'best'), os.path.join(dst, 'best')
    same_run = _same_file(os.path.join(src, 'results.json'), os.path.join(dst, 'results.json'))
    if has_params(src) and os.path.isdir(src_best) and (
        best == 'all' or (best == 'curriculum' and name in in_chain)):
      _copy_tree_atomic(src_best, dst_best)
    elif best == 'none' or not same_run:
      _remove_tree(dst_best)
    for f in ARCHIVED_FILES:
      if os.path.exists(os.path.join(src, f)):
        _copy_atomic(os.path.join(src, f), os.path.join(dst, f))
      elif os.path.exists(os.path.join(dst, f)):
        os.remove(os.path.join(dst, f))  # an older copy's file that this run does not have
    # Now finished (results.json is there): the snapshot archived while it ran is not needed.
    if os.path.exists(os.path.join(dst, UNFINISHED_MARKER)):
      os.remove(os.path.join(dst, UNFINISHED_MARKER))
    _remove_tree(os.path.join(dst, 'checkpoints'))
    names.append(name)
  return names


def _config_key(config_spec: str) -> tuple[str, str]:
  path, _, arg = str(config_spec).partition(':')
  return os.path.basename(path), arg


def restore(archive_dir: str, sweep_dir: str, sweep: Sweep, config_spec: str,
            log=print) -> list[str]:
  """Copies the points of `sweep` that `archive_dir` (an `archive` of the same sweep and config)
  holds finished and `sweep_dir` has no directory for into `sweep_dir` (what `archive` keeps:
  ARCHIVED_FILES and best/), so that the sweep skips them and the next step of a curriculum
  chain starts from their archived best/. A point archived without parameters that an unfinished
  point starts from (directly, or through points that must run again for the same reason) is
  not restored: it runs again, and says so, unless the point that starts from it resumes from an
  archived snapshot (`restore_unfinished`; a resume reads its own checkpoint, not its source's
  parameters). A point with a directory in `sweep_dir`, finished or
  not, is left as it is: a live run is never replaced. Each point is copied under a temporary
  name of this process (`sweep_dir`/.restoring-*) and renamed; a point that another process
  restored meanwhile is left to it. Returns the restored points."""
  manifest = _read_manifest(os.path.join(archive_dir, 'sweep.json'))
  if manifest is None:
    raise FileNotFoundError(f'--from_archive {archive_dir!r}: no sweep.json there (not an '
                            'archive that experiments.archive wrote)')
  if (manifest.get('name'), manifest.get('base')) != (sweep.name, sweep.base):
    raise ValueError(
        f'--from_archive {archive_dir!r} holds sweep {manifest.get("name")!r} (base '
        f'{manifest.get("base")!r}), not {sweep.name!r} (base {sweep.base!r})')
  if manifest.get('config') and _config_key(manifest['config']) != _config_key(config_spec):
    raise ValueError(f'--from_archive {archive_dir!r} ran with --config={manifest["config"]}, not '
                     f'{config_spec}: its points are other runs')
  names = [slug(p) for p in sweep.points]
  live = lambda n: is_finished(os.path.join(sweep_dir, n))
  archived = {n for n in names if is_finished(os.path.join(archive_dir, n))}
  # Points that will run: unfinished here and not restorable (not in the archive, or a live run
  # of it is here), and (growing) the archived sources without parameters that those start from.
  to_run = {n for n in names if not live(n) and (
      n not in archived or os.path.exists(os.path.join(sweep_dir, n)))}
  # ... except those that resume from an archived snapshot (restore_unfinished): a resume starts
  # from its own checkpoint, not from its source's parameters.
  to_run -= {n for n in to_run if not os.path.exists(os.path.join(sweep_dir, n))
             and unfinished_step(os.path.join(archive_dir, n)) is not None}
  rerun = set()
  for n in to_run:  # back along its chain while a source has no archived parameters
    source = sweep.init_from.get(n)
    while (source in archived and source not in rerun and not live(source)
           and not has_params(os.path.join(archive_dir, source))):
      rerun.add(source)
      source = sweep.init_from.get(source)
  restored = []
  with _sweep_dir_lock(sweep_dir):  # two sweeps restoring into one dir take turns
    tmp_root = tempfile.mkdtemp(prefix='.restoring-', dir=sweep_dir)  # no point is named so
    try:
      for name in names:
        src, dst = os.path.join(archive_dir, name), os.path.join(sweep_dir, name)
        if name not in archived:
          continue
        if os.path.exists(dst):
          if not is_finished(dst):
            log(f'  {name}: finished in the archive, but {dst} holds an unfinished run; left '
                'as it is')
          continue
        if name in rerun:
          log(f'  {name}: not restored, the archive has no parameters of it and a point to run '
              'starts from it; it runs again')
          continue
        tmp = os.path.join(tmp_root, name)
        os.makedirs(tmp)
        if os.path.isdir(os.path.join(src, 'best')):
          shutil.copytree(os.path.join(src, 'best'), os.path.join(tmp, 'best'))
        for f in ARCHIVED_FILES:  # results.json last
          if os.path.exists(os.path.join(src, f)):
            shutil.copyfile(os.path.join(src, f), os.path.join(tmp, f))
        if os.path.exists(dst):  # a sweep without --from_archive started this point meanwhile
          continue
        os.rename(tmp, dst)
        restored.append(name)
    finally:
      shutil.rmtree(tmp_root, ignore_errors=True)
  return restored


# An unfinished point's snapshot in an archive: its latest complete resumable checkpoint
# (checkpoints/<step>: parameters, optimizer state, data position), its best/ and the files the
# run appends to, so that a run longer than one machine's life continues on the next machine
# where it stopped. UNFINISHED_MARKER, written last, names the step; a directory without it is
# not a snapshot (a copy cut short).
UNFINISHED_MARKER = 'unfinished.json'
_SNAPSHOT_FILES = ('config.json', 'metrics.jsonl', 'stdout.log', environment.ENVIRONMENT_FILE)
_COMMIT_MARKER = 'commit_success.txt'  # orbax's, in a complete step directory (checkpoint.py)


def _complete_steps(directory: str) -> list[int]:
  """The step directories under `directory` that orbax finished writing, newest first."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(n) for n in os.listdir(directory) if n.isdigit()
                 and os.path.exists(os.path.join(directory, n, _COMMIT_MARKER))), reverse=True)


def _config_max_steps(point_dir: str) -> Optional[int]:
  """train.max_steps of the run's config.json, or None without one."""
  path = os.path.join(point_dir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get('train', {}).get('max_steps')


def unfinished_step(point_dir: str) -> Optional[int]:
  """The step at which an archived unfinished point stopped, or None when `point_dir` holds no
  snapshot (no UNFINISHED_MARKER, or a finished point)."""
  path = os.path.join(point_dir, UNFINISHED_MARKER)
  if is_finished(point_dir) or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return int(json.load(f)['step'])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: not a snapshot marker ({type(e).__name__}: {e}); expected '
                     '{"step": <int>, "max_steps": ...} as sweeps.archive_unfinished writes it; '
                     'remove the point from the archive to start it over') from e


def _whole_step(step_dir: str) -> bool:
  """A copied orbax step directory with everything a restore reads (checkpoint._check_files):
  the commit marker, orbax's step metadata and the items (state/ or params/, and meta/)."""
  names = set(os.listdir(step_dir)) if os.path.isdir(step_dir) else set()
  return {_COMMIT_MARKER, '_CHECKPOINT_METADATA', 'meta'} <= names and bool(
      names & {'state', 'params'})


def archive_unfinished(sweep_dir: str, out_dir: str, log=print) -> list[tuple[str, int]]:
  """Copies a snapshot of every unfinished point of `sweep_dir` that has a complete checkpoint
  into `out_dir` (an archive of the same sweep: call `archive` first, which checks that and
  writes the manifest): its latest checkpoint only (about 1.7 MB for the default CPU model, with
  Adam's moments), best/, config.json, metrics.jsonl and stdout.log, then UNFINISHED_MARKER with
  the step. `restore_unfinished` puts it back and the point resumes from that step, bit for bit
  as if never stopped (the data position is in the checkpoint). A snapshot is replaced only by a
  later step of the same point; a finished archived point is left alone (a live rerun of it is
  archived when it finishes). A point may be training while this runs: a checkpoint or best/
  changed under the copy (the run keeps only its latest few) skips the point with a message and
  keeps its earlier snapshot whole, and the next archive takes it. The order: the new step is
  copied and checked beside the old one, the marker goes, best/ and the logs are replaced (each
  atomically), the new marker is written, the old step goes; a crash at any point leaves the
  old snapshot or the new one, or (first snapshot) none. Returns (point, step) of the points
  snapshotted."""
  if _read_manifest(os.path.join(sweep_dir, 'sweep.json')) is None:
    raise FileNotFoundError(f'archive_unfinished: --sweep_dir {sweep_dir!r} has no sweep.json '
                            '(not a sweep directory)')
  if _read_manifest(os.path.join(out_dir, 'sweep.json')) is None:
    raise FileNotFoundError(f'archive_unfinished: {out_dir!r} has no sweep.json; archive the '
                            'sweep dir there first (sweeps.archive checks the sweep and writes it)')
  done = []
  for name in sorted(os.listdir(sweep_dir)):
    src, dst = os.path.join(sweep_dir, name), os.path.join(out_dir, name)
    if not os.path.isdir(src) or is_finished(src) or is_finished(dst):
      continue
    steps = _complete_steps(os.path.join(src, 'checkpoints'))
    if not steps or not os.path.exists(os.path.join(src, 'config.json')):
      continue
    step, have = steps[0], unfinished_step(dst)
    if have is not None and have >= step:
      continue  # the archive's snapshot is as far along (a later session's live run is not)
    marker = os.path.join(dst, UNFINISHED_MARKER)
    new_step = os.path.join(dst, 'checkpoints', str(step))
    try:
      _copy_tree_atomic(os.path.join(src, 'checkpoints', str(step)), new_step)
      if not _whole_step(new_step):
        raise FileNotFoundError(f'checkpoints/{step} lost files while copied')
    except (OSError, shutil.Error) as e:
      _remove_tree(new_step)
      log(f'  {name}: not snapshotted, its checkpoint changed while copied ({e}); archive again')
      continue
    old_marker = None
    if os.path.exists(marker):
      with open(marker) as f:
        old_marker = json.load(f)
      os.remove(marker)  # from here to the new marker, best/ and the logs are being replaced
    try:
      if os.path.isdir(os.path.join(src, 'best')):
        _copy_tree_atomic(os.path.join(src, 'best'), os.path.join(dst, 'best'))
        if not all(_whole_step(os.path.join(dst, 'best', n))
                   for n in os.listdir(os.path.join(dst, 'best')) if n.isdigit()):
          raise FileNotFoundError('best/ lost files while copied')
      for f in _SNAPSHOT_FILES:
        if os.path.exists(os.path.join(src, f)):
          _copy_atomic(os.path.join(src, f), os.path.join(dst, f))
      max_steps = _config_max_steps(dst)
    except (OSError, shutil.Error, ValueError) as e:
      _remove_tree(new_step)
      if old_marker is not None:  # the earlier snapshot: its step is whole; a newer best/ and
        _write_json(marker, old_marker)  # newer metrics rows are set aside when it resumes
      log(f'  {name}: not snapshotted, best/ or its logs changed while copied ({e}); archive '
          'again' + (f' (the snapshot of step {have} stays)' if have is not None else ''))
      continue
    _write_json(marker, {'step': step, 'max_steps': max_steps})
    for other in os.listdir(os.path.join(dst, 'checkpoints')):
      if other != str(step):
        _remove_tree(os.path.join(dst, 'checkpoints', other))
    done.append((name, step))
  return done


def restore_unfinished(archive_dir: str, sweep_dir: str, sweep: Sweep,
                       log=print) -> list[tuple[str, int]]:
  """Copies the archived snapshot (`archive_unfinished`) of every point of `sweep` that
  `sweep_dir` has no directory for into `sweep_dir`, under a temporary name and renamed, so the
  sweep resumes it from the snapshot's step instead of starting it over. Call after `restore`
  (which checks that the archive is of this sweep). A point with a directory in `sweep_dir` is a
  live run and is left alone. Returns (point, step) of the restored points."""
  restored = []
  with _sweep_dir_lock(sweep_dir):
    tmp_root = tempfile.mkdtemp(prefix='.restoring-', dir=sweep_dir)
    try:
      for name in (slug(p) for p in sweep.points):
        src, dst = os.path.join(archive_dir, name), os.path.join(sweep_dir, name)
        step = unfinished_step(src)
        if step is None or os.path.exists(dst):
          continue
        tmp = os.path.join(tmp_root, name)
        shutil.copytree(src, tmp)
        os.remove(os.path.join(tmp, UNFINISHED_MARKER))
        if os.path.exists(dst):  # a sweep without --from_archive started this point meanwhile
          continue
        os.rename(tmp, dst)
        log(f'  {name}: resumes from its archived step {step}')
        restored.append((name, step))
    finally:
      shutil.rmtree(tmp_root, ignore_errors=True)
  return restored
