"""The profile breakdown behind WORKSPACE.md's speed shares (benchmarks/profile_breakdown.py)."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import profile_breakdown  # noqa: E402


def test_exclusive_times_take_nested_events_out_of_their_parent():
  # a loop (0-10) around two ops (1-4, 5-9), and an op after it (12-13)
  evs = [('while', 0.0, 10.0), ('dot.1', 1.0, 3.0), ('fusion.2', 5.0, 4.0), ('copy.3', 12.0, 1.0)]
  got = dict(profile_breakdown._exclusive_times(evs))
  assert got == pytest.approx({'while': 3.0, 'dot.1': 3.0, 'fusion.2': 4.0, 'copy.3': 1.0})


def test_breakdown_names_the_kinds_of_a_compiled_function():
  def f(a, b, x):
    dense = jnp.tanh(a @ b)                        # a plain matmul
    batched = jnp.einsum('bij,bjk->bik', x, x)     # a matmul with a batch dimension
    return jnp.sum(dense) + jnp.sum(jnp.exp(batched))

  args = (jnp.ones((256, 256)), jnp.ones((256, 256)), jnp.ones((8, 64, 64)) * 0.01)
  compiled = jax.jit(f).lower(*args).compile()
  kinds = profile_breakdown.hlo_kinds(compiled.as_text())
  assert 'dense dot' in kinds.values() and 'batched dot' in kinds.values()
  out = profile_breakdown.breakdown(lambda: jax.block_until_ready(compiled(*args)),
                                    compiled.as_text(), steps=2)
  assert out['total_op_s'] > 0
  assert sum(out['fractions'].values()) == pytest.approx(1.0, abs=1e-3)
  assert out['fractions'].get('dense dot', 0) > 0
  assert all(kind in profile_breakdown.KINDS for _, kind, _ in out['top_ops'])


# ------------------------------------------------------------------------------------------------
# benchmarks/plot_curves.py: stages of a curriculum chained end to end.

import json  # noqa: E402

import plot_curves  # noqa: E402


def _stage(path, rows, torn=False):
  os.makedirs(path)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')
    if torn:
      f.write('{"step": 9')


def test_chain_points_offset_each_stage_by_the_steps_before_it(tmp_path):
  a, b = str(tmp_path / 'n4'), str(tmp_path / 'n8')
  _stage(a, [{'step': 10, 'loss': 1.0}, {'step': 100, 'val/em': 0.5},
             {'step': 130, 'final/em': 0.6}])
  _stage(b, [{'step': 100, 'val/em': 0.2}, {'step': 150, 'loss': 0.3}], torn=True)
  points, starts = plot_curves.chain_points([a, b])
  assert points == [(100, 0.5), (130, 0.6), (230, 0.2)]
  assert starts == [130]


def test_plot_curves_names_a_bad_spec_and_a_missing_run(tmp_path):
  with pytest.raises(ValueError, match='label=dir'):
    plot_curves._parse('no_label_here')
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    plot_curves.chain_points([str(tmp_path / 'nothing')])
