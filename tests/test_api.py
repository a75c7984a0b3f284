"""The notebook API: write a context once, answer several queries from the memory."""
from __future__ import annotations

import os

import numpy as np
import pytest

from configs import kv_retrieval
from gradmem_jax.api import GradMemModel
from gradmem_jax.training import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_once_answer_many():
  model = GradMemModel.from_config(f'{ROOT}/configs/kv_retrieval.py:tiny,K=2')
  mem = model.write(['!ab:cd!!ef:gh!|', '!xy:zw!!Pq:R0!|'])
  assert mem.state['memory'].shape == (2, 2, 16)
  assert mem.stats['write_loss'].shape == (2, 2)
  answers = model.answer(mem, ['?!ab:', '?!ef:', '?!zz:'], context_index=1)
  assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
  # Greedy answers are what the teacher-forced argmax reads as exact.
  for q, a in zip(['?!ab:', '?!ef:'], answers):
    if a:
      assert model.score(mem, q, a, context_index=1)['exact']
  more = model.write('!ab:cd!!ef:gh!|', K=5)
  assert more.stats['write_loss'].shape == (1, 5)


def test_bad_input_errors():
  model = GradMemModel.from_config(f'{ROOT}/configs/kv_retrieval.py:tiny')
  with pytest.raises(ValueError, match="character '#'"):
    model.write('!a#:cd!|')
  with pytest.raises(ValueError, match='outside the model vocabulary'):
    model.write(np.array([5, 6, 999]))


def test_from_workdir(tmp_path):
  train_and_evaluate(kv_retrieval.get_config('tiny,max_steps=2'), str(tmp_path))
  model = GradMemModel.from_workdir(str(tmp_path))
  mem = model.write('!ab:cd!!ef:gh!|')
  assert len(model.answer(mem, ['?!ab:'])) == 1
