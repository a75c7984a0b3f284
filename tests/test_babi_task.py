"""The bAbI QA task (`data.task=babi`, gradmem_jax/data/babi_task.py) and the text-reconstruction
task (`data.task=textrec`, textrec_task.py): built from their configs, batches that round-trip to
the original text, story cutting, errors, scoring, and a few-step run of each through the runner.

Reads the shipped release in ../shared/data/babi (beside this checkout, as in CI).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from configs import babi as babi_config
from configs import textrec as textrec_config
from gradmem_jax.data import babi, build_task
from gradmem_jax.data.babi_task import BabiTask, BabiTaskConfig, story_start
from gradmem_jax.training import train_and_evaluate

pytestmark = pytest.mark.skipif(not os.path.isdir(babi_config.SHARED_BABI),
                                reason='../shared/data/babi is not here')


@pytest.fixture(scope='module')
def qa1():
  return build_task(babi_config.get_config().data)


@pytest.fixture(scope='module')
def rec():
  return build_task(textrec_config.get_config('tiny').data)


def _rows(task, samples):
  """(context text, query text, target ids) of every row of a collated batch, read back through
  the masks."""
  batch = task.collate(samples, batch_size=len(samples) + 1)   # one padding row
  assert not batch['target_mask'][-1].any()
  out = []
  for i in range(len(samples)):
    ctx = batch['context'][i][batch['context_mask'][i] == 1]
    t = batch['target_mask'][i] == 1
    first = int(np.argmax(t))
    out.append((task.tokenizer.decode(ctx), task.tokenizer.decode(batch['qa'][i][:first]),
                batch['qa'][i][t]))
  return out


# ------------------------------------------------------------------------------------------------
# bAbI.


def test_babi_task_builds_from_the_default_config(qa1):
  config = babi_config.get_config()
  assert config.data.task == 'babi' and config.data.babi_dir == babi_config.SHARED_BABI
  assert (config.memory.num_memory, config.memory.K, config.memory.method) == (8, 1, 'gradmem')
  assert isinstance(qa1, BabiTask) and qa1.identity() == {'task': 'babi', 'babi_task': 1}
  assert len(qa1.train_set) == 9000 and len(qa1.validation_set()) == 1000
  assert qa1.ignore_ids == () and qa1.stop_ids == (qa1.tokenizer.eos_id,)
  assert qa1.context_len == 72 and qa1.max_new_tokens == 2    # longest QA1 story: 68 words
  assert 'QA1' in qa1.summary and 'fallback' not in qa1.summary and 'unknown' not in qa1.summary


def test_babi_batches_round_trip(qa1):
  tok = qa1.tokenizer
  val = qa1.validation_set()
  for (context, query, target), s in zip(_rows(qa1, val[:40]), val[:40]):
    ex = s.example
    assert context == babi.render_story(ex.story) and query == ex.question + ' Answer:'
    assert target[-1] == tok.eos_id and tok.decode(target) == ' ' + ex.answer
  # The held-out questions are the last 1,000 of the training file, in order; none is trained on.
  assert val[0].qid.startswith('en-10k/qa1_single-supporting-fact_train.txt.gz:')
  assert not {s.qid for s in val} & {s.qid for s in qa1.train_set}
  # Every training sample of an epoch exactly once, in a seed-dependent, length-grouped order.
  order = [qa1.train_sample(i).qid for i in range(9000)]
  assert sorted(order) == sorted(s.qid for s in qa1.train_set)
  _, batch = next(qa1.train_batches(32))
  assert batch['context'].shape[1] in (32, 64, 72) and batch['qa'].shape == (32, qa1.qa_len)


def test_supporting_facts_are_in_every_context(qa1):
  tok = qa1.tokenizer
  for s in qa1.validation_set() + qa1.train_set[::7]:
    context = tok.decode(s.context)
    assert s.first_sentence == 0 and context.endswith(s.example.story[-1])
    for i in s.example.supporting:
      assert s.example.story[i] in context
  # Keeping only the last 2 statements moves back to the earliest supporting fact.
  cut = BabiTask(BabiTaskConfig(task_id=2, max_story_sentences=2, n_val=200))
  moved = 0
  for s in cut.validation_set():
    ex, context = s.example, cut.tokenizer.decode(s.context)
    assert context == babi.render_story(ex.story[s.first_sentence:])
    assert s.first_sentence <= min(ex.supporting) and all(ex.story[i] in context
                                                          for i in ex.supporting)
    moved += s.first_sentence < len(ex.story) - 2
  assert moved > 50   # QA2's two facts are often far apart


def test_story_start_rule():
  ex = babi.BabiExample(1, tuple(f'S{i}.' for i in range(10)), 'Q?', 'a', (4, 7), 'f:1')
  assert [story_start(ex, n) for n in (0, 1, 3, 6, 20)] == [0, 4, 4, 4, 0]


def test_babi_presets_splits_and_lengths(tmp_path):
  c = babi_config.get_config('qa3,eval_split=test,n_val=50')
  assert c.data.task_id == 3
  task = build_task(c.data)
  assert task.identity() == {'task': 'babi', 'babi_task': 3, 'eval_split': 'test'}
  # cut stories are another task: reports tell a curriculum's stages apart
  cut = build_task(babi_config.get_config('qa1,max_story_sentences=2,n_val=50').data)
  assert cut.identity() == {'task': 'babi', 'babi_task': 1, 'max_story_sentences': 2}
  assert len(task.train_set) == 900 and len(task.validation_set()) == 50
  assert 'en/qa3_three-supporting-facts_train.txt.gz instead' in task.summary  # the fallback
  with pytest.raises(ValueError, match=r'data.context_len=40 is shorter than question en-10k/'
                                       r"qa1_\S+:\d+ \('Where is \w+\?'"):
    BabiTask(BabiTaskConfig(context_len=40))
  with pytest.raises(ValueError, match='data.n_val=1001 exceeds the 1000 valid questions'):
    BabiTask(BabiTaskConfig(n_val=1001))
  g = babi_config.get_config('gpt2,qa2,K=5,hf_checkpoint=/x/gpt2')
  assert g.model.to_dict() == dict(kind='gpt2', hf_checkpoint='/x/gpt2', vocab_size=0,
                                   dtype='bfloat16', param_dtype='float32', remat='none',
                                   embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
  assert (g.memory.num_memory, g.memory.inner_lr, g.memory.mem_proj, g.memory.K) == (8, 0.4,
                                                                                     'proj', 5)
  assert (g.optim.lr, g.optim.batch_size, g.optim.warmup_steps) == (1e-4, 64, 10_000)
  assert g.data.tokenizer == 'model' and g.data.task_id == 2
  assert babi_config.COMPARE == ('gradmem', 'rmt:K=1;memory.mem_proj=proj', 'full_context')
  assert babi_config.get_config('rmt').memory.method == 'rmt'
  assert babi_config.get_config('rmt').memory.mem_proj == 'proj'  # RMT's forward writer needs it


@pytest.mark.parametrize('make, error', [
    (lambda p: str(p / 'missing'), FileNotFoundError),
    (lambda p: str(p), FileNotFoundError),                            # exists, but empty
    (lambda p: _copy_with(p, b'1 Mary went to the kitchen.\n'), babi.BabiFormatError),
    ])
def test_bad_babi_dir_names_the_field_and_the_layout(tmp_path, make, error):
  with pytest.raises(error) as info:
    build_task({'task': 'babi', 'babi_dir': make(tmp_path)})
  msg = str(info.value)
  assert 'data.babi_dir=' in msg and 'en-10k/qa1_single-supporting-fact_train.txt.gz' in msg, msg
  assert 'tasks_1-20_v1-2' in msg


def _copy_with(root, content: bytes) -> str:
  (root / 'en-10k').mkdir()
  (root / 'en-10k' / 'qa1_single-supporting-fact_train.txt').write_bytes(content)
  return str(root)


@pytest.mark.parametrize('field, value, match', [
    ('babi_dir', '', 'data.babi_dir is empty'), ('task_id', 21, 'data.task_id=21'),
    ('eval_split', 'dev', 'data.eval_split'), ('query_template', 'Q:', r'\{question\}'),
    ('tokenizer', '', 'data.tokenizer'), ('bucket', -1, 'data.bucket')])
def test_bad_babi_config(field, value, match):
  with pytest.raises(ValueError, match=match):
    build_task({'task': 'babi', field: value})


def test_babi_score_prediction(qa1):
  s = qa1.validation_set()[0]
  answer = s.example.answer
  assert qa1.score_prediction(s, answer) == {'gen_em': 1.0}
  assert qa1.score_prediction(s, f'  {answer.upper()}.') == {'gen_em': 1.0}
  assert qa1.score_prediction(s, f'{answer} {answer}') == {'gen_em': 0.0}
  assert qa1.score_prediction(s, '') == {'gen_em': 0.0}
  other = next(x for x in ('kitchen', 'garden', 'office') if x != answer)
  assert qa1.score_prediction(s, other) == {'gen_em': 0.0}


# ------------------------------------------------------------------------------------------------
# Text reconstruction.


def test_textrec_batches_round_trip_to_the_original_text(rec):
  assert rec.identity() == {'task': 'textrec', 'span_len': '8-16', 'source': 'babi'}
  assert rec.ignore_ids == () and rec.context_len == 16 and len(rec.validation_set()) == 16
  docs = {d.key: d for d in babi_documents_qa1()}
  for (context, query, target), s in zip(_rows(rec, rec.validation_set()), rec.validation_set()):
    doc = docs[s.span.document]
    assert context == s.span.text and doc.text[s.span.start:].startswith(context)
    assert s.span.start in doc.starts and 8 <= len(s.context) <= 16
    assert query == '' and target[-1] == rec.eos_id
    assert np.array_equal(target[:-1], s.context) and rec.tokenizer.decode(target) == context
  held_out = {s.span.group for s in rec.validation_set()}
  assert not held_out & {s.span.group for s in rec.train_set}
  assert rec.score_prediction(s, ' ' + s.span.text) == {'gen_em': 1.0}
  assert rec.score_prediction(s, s.span.text[:-1]) == {'gen_em': 0.0}


def babi_documents_qa1():
  from gradmem_jax.data.textrec import babi_documents
  return babi_documents(babi_config.SHARED_BABI, (1,), 'train')


def test_textrec_bytes_and_prompt():
  task = build_task(dict(textrec_config.get_config('tiny').data, tokenizer='bytes',
                         prompt=' Repeat:', min_len=20, max_len=40))
  for (context, query, target), s in zip(_rows(task, task.validation_set()),
                                         task.validation_set()):
    assert context == s.span.text and query == ' Repeat:' and task.tokenizer.decode(target) == context
    assert 20 <= len(s.span.text.encode()) <= 40
  every = build_task(dict(textrec_config.get_config('tiny').data, n_val=10**6))
  assert len(every.validation_set()) == len(every.spans.valid) > 16   # n_val is a cap
  with pytest.raises(ValueError, match='data.source'):
    build_task({'task': 'textrec', 'source': 'wiki'})
  with pytest.raises(ValueError, match='data.min_len=9 and data.max_len=8'):
    build_task({'task': 'textrec', 'min_len': 9, 'max_len': 8})


# ------------------------------------------------------------------------------------------------
# The runner.


def test_babi_runs_through_the_runner_and_generates(tmp_path):
  config = babi_config.get_config('tiny')
  with config.unlocked():
    config.eval.evaluators = ('teacher_forced', 'generate')
  results = train_and_evaluate(config, str(tmp_path))
  assert results['task'] == 'babi' and results['babi_task'] == 1 and results['steps'] == 4
  assert results['identity_fields'][:2] == ['task', 'babi_task']
  assert np.isfinite(results['final']['target_loss']) and 0 <= results['final']['gen_em'] <= 1
  saved = json.load(open(tmp_path / 'results.json'))
  assert 'bAbI QA1' in saved['task_summary']


def test_textrec_runs_through_the_runner_and_generates_from_an_empty_prompt(tmp_path):
  # RMT: the same READ and generation from memory as GradMem (the runner test above covers the
  # GradMem WRITE), at a fraction of the compile time.
  config = textrec_config.get_config('tiny,rmt')
  with config.unlocked():
    config.eval.evaluators = ('teacher_forced', 'generate')
  results = train_and_evaluate(config, str(tmp_path))
  assert results['task'] == 'textrec' and results['span_len'] == '8-16'
  assert results['steps'] == 4 and np.isfinite(results['final']['target_loss'])
  assert 0 <= results['final']['token_acc'] <= 1 and 'em' in results['final']
  assert 0 <= results['final']['gen_em'] <= 1
