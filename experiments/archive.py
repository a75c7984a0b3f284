r"""Copies a sweep's finished results to a directory that can be committed.

  python -m experiments.archive --sweep_dir=runs/claims_cpu \
      --out=benchmarks/results/runs/claims_cpu

Run directories hold checkpoints (megabytes per point) and live on the machine that ran them; a
session's machine does not outlast it. The archive keeps what the reports read (config.json,
results.json, metrics.jsonl, k_extrapolation.json, stdout.log and sweep.json; `sweeps.archive`),
so `experiments.claims` and `experiments.report` accept it as a sweep dir, `experiments.claims`
also before a live one (`--sweep_dir=ARCHIVE,runs/claims_cpu --out=...`: the live run of a point
replaces its archived copy). No checkpoints, but the best parameters (best/, about 0.6 MB for the
default CPU model) of the points of curriculum chains (`--best=all|none`: every point's, or
none): `python -m experiments.sweep ... --from_archive=ARCHIVE` copies the archived finished
points that the sweep dir lacks back into it, so a later session continues a chain where the
archive left it. `experiments.babi_curriculum_table` does not read an archive: it evaluates each
task's final stage on the test split, which needs the final stages' parameters. Rerunning the
archive updates it; points archived earlier that the sweep dir no longer has stay.

Unfinished points (`--unfinished`, on by default) are archived as snapshots: the latest
checkpoint (parameters, optimizer state, data position), best/ and the logs, with
unfinished.json naming the step. `--from_archive` copies a snapshot back when the sweep dir lacks
the point, and the run resumes from that step as if it had never stopped: a run longer than a
machine's life (RMT x5's 12,000 steps on 2 cores) continues across sessions. Archive again
before the machine goes; a snapshot is only replaced by a later step.
"""
from __future__ import annotations

from absl import app, flags

from gradmem_jax import sweeps

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'The sweep directory to archive.',
                                 required=True)
_OUT = flags.DEFINE_string('out', None, 'The archive directory.', required=True)
_UNFINISHED = flags.DEFINE_bool(
    'unfinished', True, 'Also snapshot the unfinished points (their latest checkpoint, about '
    '1.7 MB for the default CPU model; sweeps.archive_unfinished), so that '
    '`experiments.sweep --from_archive` on the next machine resumes them where they stopped.')
_BEST = flags.DEFINE_enum('best', 'curriculum', list(sweeps.ARCHIVE_BEST),
                          'Also keep the best parameters (best/) of: the points of curriculum '
                          'chains (a later session continues a chain from them: '
                          'experiments.sweep --from_archive), every point, or none.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  names = sweeps.archive(_SWEEP_DIR.value, _OUT.value, best=_BEST.value)
  print(f'archived {len(names)} finished points of {_SWEEP_DIR.value} to {_OUT.value}')
  for n in names:
    print(f'  {n}')
  if _UNFINISHED.value:
    snaps = sweeps.archive_unfinished(_SWEEP_DIR.value, _OUT.value)
    print(f'snapshotted {len(snaps)} unfinished points (they resume from the step named)')
    for n, step in snaps:
      print(f'  {n}: step {step}')


if __name__ == '__main__':
  app.run(main)
