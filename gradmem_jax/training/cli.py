"""The shared absl entry point of the training experiments (experiments/kv_retrieval.py,
experiments/short_squad.py): `--config=FILE[:presets,overrides]`, `--workdir`, a temporary workdir
when none is given, and a clean multi-process exit."""
from __future__ import annotations

import tempfile
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from gradmem_jax.training.mesh import finish_distributed
from gradmem_jax.training.train import train_and_evaluate


def define_flags(default_config: str):
  config = config_flags.DEFINE_config_file('config', default_config,
                                           'Experiment config file[:presets,overrides].')
  workdir = flags.DEFINE_string('workdir', None,
                                'Output directory (checkpoints, metrics, results).')
  return config, workdir


def make_main(config_flag, workdir_flag, prefix: str) -> Callable:
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    workdir = workdir_flag.value or tempfile.mkdtemp(prefix=prefix)
    if not workdir_flag.value:
      print(f'no --workdir given: writing to {workdir}', flush=True)
    train_and_evaluate(config_flag.value, workdir)
    finish_distributed()
  return main
