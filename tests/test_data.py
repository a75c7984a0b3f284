"""KV-retrieval generator, tokenizer and batching."""
from __future__ import annotations

import numpy as np
import pytest

from gradmem_jax.data import collate
from gradmem_jax.data.kv import CharTokenizer, KVTask, KVTaskConfig


def test_tokenizer_ids_match_spec():
  t = CharTokenizer(62)
  assert t.vocab_size == 70
  assert [t.token_id(c) for c in 'aA0'] == [4, 30, 56]
  assert [t.token_id(c) for c in '!?:|'] == [66, 67, 68, 69]
  t512 = CharTokenizer(512)
  assert t512.vocab_size == 520
  assert [t512.token_id(c) for c in '!?:|'] == [516, 517, 518, 519]


@pytest.mark.parametrize('size', [62, 512])
def test_tokenizer_round_trip(size):
  t = CharTokenizer(size)
  text = '!' + t.symbols[:5] + ':' + t.symbols[-3:] + '!|?' + t.symbols[100 % size]
  assert t.decode(t.encode(text)) == text
  assert t.decode(np.concatenate([t.encode(text), [0, 0]])) == text  # pads dropped


def test_tokenizer_unknown_character_errors():
  with pytest.raises(ValueError, match=r"character '#' at position 3"):
    CharTokenizer(62).encode('!ab#')
  with pytest.raises(ValueError, match='outside the vocabulary'):
    CharTokenizer(62).decode([5, 99])


def test_sample_format_and_unique_keys():
  task = KVTask(KVTaskConfig(n_pairs=8, n_val=4, train_size=100))
  tok = task.tokenizer
  for i in range(50):
    s = task.train_sample(i)
    text = tok.decode(s.context)
    assert len(s.context) == 7 * 8 + 1 == task.cfg.context_len
    assert text.startswith('!') and text.endswith('!|')
    pairs = text[1:-2].split('!!')
    assert len(pairs) == 8
    keys = [p.split(':')[0] for p in pairs]
    assert all(len(k) == 2 for k in keys) and len(set(keys)) == 8
    q, tgt = tok.decode(s.query), tok.decode(s.target)
    assert q.startswith('?!') and q.endswith(':') and tgt.endswith('!|')
    assert f'{q[2:-1]}:{tgt[:-2]}' in pairs  # the query's value is the pair's value


def test_segments_and_filler():
  task = KVTask(KVTaskConfig(n_pairs=6, n_segments=3, filler_len=5, n_val=2))
  s = task.train_sample(0)
  assert len(s.context) == task.cfg.context_len == 6 * 7 + 2 * 5 + 1
  text = task.tokenizer.decode(s.context)
  assert text.count(':') == 6


def test_deterministic_by_seed():
  a = KVTask(KVTaskConfig(n_pairs=4, n_val=8))
  b = KVTask(KVTaskConfig(n_pairs=4, n_val=8))
  c = KVTask(KVTaskConfig(n_pairs=4, n_val=8, seed=5))
  for i in (0, 7, 123):
    np.testing.assert_array_equal(a.train_sample(i).context, b.train_sample(i).context)
  assert any(not np.array_equal(a.train_sample(i).context, c.train_sample(i).context)
             for i in range(5))
  np.testing.assert_array_equal(a.validation_set()[3].context, b.validation_set()[3].context)


def test_train_and_validation_disjoint_over_first_epoch():
  # A tiny key space (2 symbols... of a 62 alphabet is large, so use 1-symbol keys and values and
  # 1 pair: 62 * 62 possible contexts) makes collisions certain without the rejection rule.
  cfg = KVTaskConfig(n_pairs=1, key_len=1, value_len=1, n_val=300, train_size=2000)
  task = KVTask(cfg)
  val = {task.validation_set()[i].context.tobytes() for i in range(cfg.n_val)}
  train = [task.train_sample(i).context.tobytes() for i in range(cfg.train_size)]
  assert not val & set(train)
  # ...and the rule is what makes it so: unfiltered draws would collide.
  raw = [task._draw(np.random.default_rng([cfg.seed, j])).context.tobytes()
         for j in range(cfg.train_size)]
  assert val & set(raw)


def test_epochs_reshuffle_the_same_samples():
  task = KVTask(KVTaskConfig(n_pairs=2, n_val=4, train_size=20))
  e0 = sorted(task.train_sample(i).context.tobytes() for i in range(20))
  e1_order = [task.train_sample(20 + i).context.tobytes() for i in range(20)]
  assert sorted(e1_order) == e0
  assert e1_order != [task.train_sample(i).context.tobytes() for i in range(20)]


def test_host_slices_tile_the_global_batch():
  task = KVTask(KVTaskConfig(n_pairs=3, n_val=10))
  (_, full), = [next(task.train_batches(8, start_index=16))]
  parts = [next(task.train_batches(8, start_index=16, process_index=p, process_count=4))[1]
           for p in range(4)]
  np.testing.assert_array_equal(np.concatenate([p['context'] for p in parts]), full['context'])
  with pytest.raises(ValueError, match='divisible'):
    next(task.train_batches(6, process_count=4))


def test_eval_batches_pad_without_dropping():
  task = KVTask(KVTaskConfig(n_pairs=2, n_val=10))
  batches = task.eval_batches(4)
  assert len(batches) == 3
  real = sum(int(np.any(b['target_mask'], axis=1).sum()) for b in batches)
  assert real == 10  # every validation sample once; padding samples carry no targets


def test_eval_batches_of_a_host_without_samples_score_nothing():
  task = KVTask(KVTaskConfig(n_pairs=2, n_val=9))
  # global batch 8 over 4 hosts: the last batch holds 1 sample, hosts 1-3 get none of it
  per_host = [task.eval_batches(8, p, 4) for p in range(4)]
  assert all(len(b) == 2 for b in per_host)
  scored = sum(int(b['target_mask'].any(1).sum()) for bs in per_host for b in bs)
  assert scored == 9
  assert not per_host[3][1]['target_mask'].any()


def test_collate_never_truncates():
  task = KVTask(KVTaskConfig(n_pairs=2, n_val=2))
  s = task.train_sample(0)
  with pytest.raises(ValueError, match='exceeds the bucket length'):
    collate([s], 0, context_len=5)
  b = collate([s], 0, context_len=20)
  assert b['context'].shape == (1, 20) and b['context_mask'].sum() == len(s.context)


@pytest.mark.parametrize('field,value', [('n_pairs', 0), ('alphabet_size', 100),
                                         ('n_segments', 9), ('filler_len', -1)])
def test_bad_task_config_errors(field, value):
  kw = {'n_pairs': 4, field: value}
  with pytest.raises(ValueError, match=f'data.{field}'):
    KVTask(KVTaskConfig(**kw))
