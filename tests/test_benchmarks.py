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
