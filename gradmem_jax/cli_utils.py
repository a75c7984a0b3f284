"""Shared by the absl entry points (light: no JAX)."""
from __future__ import annotations

from absl import flags
from absl import logging as absl_logging


def quiet_logs_unless_asked() -> None:
  """absl/orbax INFO logs hidden (warnings and errors only) unless --verbosity was given: the
  console keeps to progress lines. Call first thing in main(): absl switches to INFO after
  parsing."""
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
