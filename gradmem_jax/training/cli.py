"""The one absl entry point of the training experiments: `--config=FILE[:presets,overrides]`,
`--workdir` (a temporary one when none is given), and a clean multi-process exit.

experiments/<task>.py is `cli.run('configs/<task>.py')`; experiments/train.py takes any config.

Quiet by default: absl/orbax INFO logs are hidden (warnings and errors only) so the progress line
stays readable; `--verbosity=0` shows the INFO logs, `--verbosity=1` debug logs too.
A run stopped by non-finite values (train.on_nonfinite) prints why and exits with status 3; one
started on a workdir that another process is training in stops at once with status 4.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from gradmem_jax import cli_utils
from gradmem_jax.training.mesh import finish_distributed
from gradmem_jax.workdir_lock import BUSY_EXIT, WorkdirBusyError
from gradmem_jax.training.train import NonFiniteError, train_and_evaluate

NONFINITE_EXIT = 3


def config_file_help(path: Optional[str]) -> str:
  """The presets and aliases of a config file (its PRESETS and ALIASES), for --help."""
  if not path or not os.path.exists(path):
    return ''
  try:
    spec = importlib.util.spec_from_file_location('_gradmem_config_help', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
  except Exception as e:  # noqa: BLE001 - help must not fail
    return f' (could not read its presets: {e})'
  out = ''
  presets = getattr(mod, 'PRESETS', None)
  if presets:
    out += f' Presets of {os.path.basename(path)}: {", ".join(presets)}.'
  aliases = getattr(mod, 'ALIASES', None)
  if aliases:
    out += ' Aliases: ' + ', '.join(f'{k}={v}' for k, v in aliases.items()) + '.'
  return out


def run(default_config: Optional[str]) -> None:
  """Defines --config (default: `default_config`) and --workdir, then runs training."""
  if default_config and not os.path.exists(default_config):  # started outside the checkout root
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default_config = os.path.join(root, default_config)
  config = config_flags.DEFINE_config_file(
      'config', default_config, 'Experiment config file[:presets,overrides], e.g. '
      'configs/<task>.py:preset,key=value (a key is a dotted path or an alias; presets apply in '
      'order; --config.section.key=value also works).' + config_file_help(default_config),
      lock_config=True)
  workdir = flags.DEFINE_string('workdir', None,
                                'Output directory (checkpoints, metrics, results); rerun with the '
                                'same one to resume. The console shows progress lines only; '
                                '--verbosity=0 adds the absl/orbax INFO logs.')
  if default_config is None:
    flags.mark_flag_as_required('config')
  # absl's --help lists the main module's flags (keyed by sys.argv[0]): list these there too.
  for name in ('config', 'workdir'):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  def main(argv):
    cli_utils.quiet_logs_unless_asked()
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    wd = workdir.value or tempfile.mkdtemp(prefix='gradmem_')
    if not workdir.value:
      print(f'no --workdir given: writing to {wd}', flush=True)
    try:
      train_and_evaluate(config.value, wd)
    except (NonFiniteError, WorkdirBusyError) as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      finish_distributed()
      sys.exit(NONFINITE_EXIT if isinstance(e, NonFiniteError) else BUSY_EXIT)
    finish_distributed()

  app.run(main)
