"""One row of a run's metrics.jsonl: what counts as a readable row. Shared by the writer (which
sets unreadable rows aside on resume, gradmem_jax/training/logging_utils.py) and the reports that
read curves back (gradmem_jax/claims.py). Imports nothing heavy: the report tools import no JAX."""
from __future__ import annotations

import json
from typing import Any, Optional

_JSON_KINDS = {list: 'a JSON array', str: 'a JSON string', int: 'a JSON number',
               float: 'a JSON number', bool: 'a JSON boolean', type(None): 'JSON null'}


def parse_row(raw: bytes) -> tuple[Any, Optional[str]]:
  """(row, None) for a metrics row (a JSON object with a numeric step), else (None, why not)."""
  try:
    row = json.loads(raw.decode('utf-8'))
  except UnicodeDecodeError:
    return None, 'not UTF-8'
  except ValueError:
    return None, 'not JSON'
  if not isinstance(row, dict):
    return None, f'{_JSON_KINDS.get(type(row), type(row).__name__)}, not an object'
  s = row.get('step')
  if isinstance(s, bool) or not isinstance(s, (int, float)):
    return None, 'no numeric "step"'
  return row, None
