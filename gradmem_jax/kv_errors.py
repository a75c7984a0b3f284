"""What a KV-retrieval model gets wrong: EM by the queried pair's position in the context, and
what the wrong answers are (JAX-free; `experiments.kv_errors` generates the answers).

A model that matches keys scores alike at every position. One that learned a shortcut does not:
one that answers with the value of a pair at a fixed place (the first or last pair, say) scores
near 100% there and near zero elsewhere, and its wrong answers are mostly other pairs' values.
One that cannot hold the values at all gets wrong answers that are no value of the context.

Outcomes of one answer (the generated text up to the task's stop symbol, scored against `vj!`):
  correct              the queried pair's value
  another pair's value the value of a pair other than the queried one (the key lookup failed,
                       the value was read whole)
  first symbol right   not a value of the context, but its first symbol is the queried value's
  other                anything else
"""
from __future__ import annotations

import collections
from typing import Sequence

OUTCOMES = ('correct', "another pair's value", 'first symbol right', 'other')


def context_pairs(context: Sequence[int], colon_id: int, key_len: int,
                  value_len: int) -> list[tuple[tuple, tuple]]:
  """(key, value) token tuples of a KV context, in order: the `key_len` tokens before each colon
  and the `value_len` after it (the colon appears nowhere else in a context)."""
  ids = list(context)
  return [(tuple(ids[i - key_len:i]), tuple(ids[i + 1:i + 1 + value_len]))
          for i, t in enumerate(ids) if t == colon_id]


def classify(sample, prediction: str, task) -> dict:
  """{'position' (1-based place of the queried pair in the context), 'n_pairs', 'outcome'} of
  one generated answer to a KV sample (`data.kv.KVSample`) of `task` (a `KVTask`)."""
  c = task.cfg
  pairs = context_pairs(sample.context.tolist(), task.colon, c.key_len, c.value_len)
  query = tuple(sample.query.tolist()[2:2 + c.key_len])  # `?!` key `:`
  positions = [i for i, (k, _) in enumerate(pairs) if k == query]
  if len(positions) != 1:
    raise ValueError(f'the queried key {query} occurs {len(positions)} times in the context '
                     f'(expected once): not a KV retrieval sample')
  j = positions[0]
  text = lambda v: task.tokenizer.decode(list(v)) + '!'
  reference = text(pairs[j][1])
  if prediction == reference:
    outcome = OUTCOMES[0]
  elif prediction in {text(v) for i, (_, v) in enumerate(pairs) if i != j}:
    outcome = OUTCOMES[1]
  elif prediction[:1] == reference[:1]:
    outcome = OUTCOMES[2]
  else:
    outcome = OUTCOMES[3]
  return {'position': j + 1, 'n_pairs': len(pairs), 'outcome': outcome}


def summarize(rows: Sequence[dict]) -> dict:
  """{'n', 'em', 'outcomes': {outcome: fraction}, 'by_position': [{'position', 'n', 'em'}]} of
  classify() rows."""
  if not rows:
    raise ValueError('summarize: no answers to summarize')
  n = len(rows)
  counts = collections.Counter(r['outcome'] for r in rows)
  by_pos = collections.defaultdict(list)
  for r in rows:
    by_pos[r['position']].append(r['outcome'] == OUTCOMES[0])
  return {'n': n, 'em': counts[OUTCOMES[0]] / n,
          'outcomes': {o: counts[o] / n for o in OUTCOMES},
          'by_position': [{'position': p, 'n': len(v), 'em': sum(v) / len(v)}
                          for p, v in sorted(by_pos.items())]}


def markdown(summaries: Sequence[tuple[str, dict]]) -> str:
  """Two tables over (name, summarize()) pairs: the outcomes, and EM by queried position."""
  head = '| run | answers | ' + ' | '.join(OUTCOMES) + ' |'
  lines = [head, '|' + '---|' * (len(OUTCOMES) + 2)]
  for name, s in summaries:
    lines.append(f'| {name} | {s["n"]} | ' + ' | '.join(
        f'{100 * s["outcomes"][o]:.1f}%' for o in OUTCOMES) + ' |')
  n_pos = max(b['position'] for _, s in summaries for b in s['by_position'])
  lines += ['', '| run | ' + ' | '.join(f'pair {p}' for p in range(1, n_pos + 1)) + ' |',
            '|' + '---|' * (n_pos + 1)]
  for name, s in summaries:
    em = {b['position']: f'{100 * b["em"]:.1f}% ({b["n"]})' for b in s['by_position']}
    lines.append(f'| {name} | ' + ' | '.join(em.get(p, '-') for p in range(1, n_pos + 1)) + ' |')
  return '\n'.join(lines)


def plot(summaries: Sequence[tuple[str, dict]], path: str) -> None:
  """Two panels over (name, summarize()) pairs: EM by the queried pair's place (a line per run),
  and the outcomes of the answers (a stacked bar per run)."""
  from gradmem_jax.report import _pyplot  # matplotlib, headless
  plt = _pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.5, 1.5 + 0.3 * len(summaries))))
  markers = 'osD^v<>ph*'
  for i, (name, s) in enumerate(summaries):  # 20 colours x 10 markers: no two runs look alike
    pos = [b['position'] for b in s['by_position']]
    ax1.plot(pos, [100 * b['em'] for b in s['by_position']], marker=markers[i % len(markers)],
             color=plt.cm.tab20(i % 20), label=name)
  ax1.set(xlabel="queried pair's place in the context (1 = first)", ylabel='EM (%)',
          title='EM by place', ylim=(-2, 102))
  ax1.legend(fontsize=7)
  bottom = [0.0] * len(summaries)
  for o in OUTCOMES:
    vals = [100 * s['outcomes'][o] for _, s in summaries]
    ax2.barh(range(len(summaries)), vals, left=bottom, label=o)
    bottom = [b + v for b, v in zip(bottom, vals)]
  ax2.set_yticks(range(len(summaries)), [n for n, _ in summaries], fontsize=7)
  ax2.invert_yaxis()
  ax2.set(xlabel='answers (%)', title='what the answers are', xlim=(0, 100))
  ax2.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=len(OUTCOMES))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
