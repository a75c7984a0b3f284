"""The one absl entry point of the training experiments: `--config=FILE[:presets,overrides]`,
`--workdir` (a temporary one when none is given), and a clean multi-process exit.

experiments/<task>.py is `cli.run('configs/<task>.py')`; experiments/train.py takes any config.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from gradmem_jax.training.mesh import finish_distributed
from gradmem_jax.training.train import train_and_evaluate


def run(default_config: Optional[str]) -> None:
  """Defines --config (default: `default_config`) and --workdir, then runs training."""
  if default_config and not os.path.exists(default_config):  # started outside the checkout root
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default_config = os.path.join(root, default_config)
  config = config_flags.DEFINE_config_file(
      'config', default_config, 'Experiment config file[:presets,overrides], e.g. '
      'configs/<task>.py:preset,key=value (presets and keys are listed in the file and in '
      'WORKSPACE.md).', lock_config=True)
  workdir = flags.DEFINE_string('workdir', None,
                                'Output directory (checkpoints, metrics, results); rerun with the '
                                'same one to resume.')
  if default_config is None:
    flags.mark_flag_as_required('config')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    wd = workdir.value or tempfile.mkdtemp(prefix='gradmem_')
    if not workdir.value:
      print(f'no --workdir given: writing to {wd}', flush=True)
    train_and_evaluate(config.value, wd)
    finish_distributed()

  app.run(main)
