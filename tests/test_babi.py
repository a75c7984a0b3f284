"""bAbI data layer (gradmem_jax/data/babi.py) and text-reconstruction spans (textrec.py).

The tests on the shipped files read ../shared/data/babi and ../shared/data/squad (beside this
checkout, as in CI); the layout-error tests write their own broken copies under tmp_path.
"""
from __future__ import annotations

import gzip
import logging
import os
import re
import shutil

import numpy as np
import pytest

from gradmem_jax.data import babi
from gradmem_jax.data.babi import (BabiExample, BabiWordTokenizer, load_babi, read_babi_file,
                                   read_babi_stories, render_example, render_story)
from gradmem_jax.data.text import ByteTokenizer
from gradmem_jax.data.textrec import (TextDocument, TextRecConfig, babi_documents, document_spans,
                                      extract_spans, squad_documents)

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                       'shared', 'data'))
BABI = os.path.join(SHARED, 'babi')
SQUAD = os.path.join(SHARED, 'squad', 'dev-v1.1.json.gz')
QA1 = os.path.join(BABI, 'en-10k', 'qa1_single-supporting-fact_train.txt.gz')

shipped = pytest.mark.skipif(not os.path.isdir(BABI), reason='../shared/data/babi is not here')


def _readme_table() -> dict[str, tuple[int, int]]:
  """{'en-10k/qa1_..._train.txt.gz': (questions, stories)} from the data README's tables."""
  rows = {}
  with open(os.path.join(BABI, 'README.md')) as f:
    for line in f:
      m = re.match(r'\| `([^`]+\.txt\.gz)` \| [^|]+ \| ([\d,]+) \| ([\d,]+) \|', line)
      if m:
        rows[m.group(1)] = (int(m.group(2).replace(',', '')), int(m.group(3).replace(',', '')))
  return rows


def _raw_questions(path: str):
  """An independent minimal parse: (question line number, {line number: statement}, ids) per
  question, straight from the text, for checking the reader's story cutting and indices."""
  out, statements = [], {}
  with gzip.open(path, 'rt') as f:
    for lineno, line in enumerate(f, start=1):
      n, body = line.rstrip('\n').split(' ', 1)
      if n == '1':
        statements = {}
      if '\t' in body:
        q, a, ids = body.split('\t')
        out.append((lineno, int(n), dict(statements), [int(i) for i in ids.split()], q.strip(), a))
      else:
        statements[int(n)] = body
  return out


# ------------------------------------------------------------------------------------------------
# The shipped files.


@shipped
def test_published_counts_per_file():
  table = _readme_table()
  assert len(table) == 79  # 39 en-10k files (no QA3 train) + 40 en files
  for name, (questions, stories) in sorted(table.items()):
    got = read_babi_stories(os.path.join(BABI, name))
    assert (sum(len(s.examples) for s in got), len(got)) == (questions, stories), name


@shipped
def test_split_counts_and_rule():
  for task in babi.PAPER_TASKS:
    train, valid, test = (load_babi(BABI, task, s) for s in babi.SPLITS)
    per_file = 1_000 if task == 3 else 10_000   # QA3 falls back to the 1k training file
    assert len(train) + len(valid) == per_file
    assert (len(train), len(valid), len(test)) == (per_file * 9 // 10, per_file // 10, 1_000)
    # valid is the tail of the training file, train the head; no story in both.
    assert train.path == valid.path
    lines = [int(ex.source.rsplit(':', 1)[1]) for ex in train.examples + valid.examples]
    assert lines == sorted(lines)
    stories = read_babi_stories(train.path)
    assert train.n_stories + valid.n_stories == len(stories)
    # The cut is at a story start: validation begins with the first question of a story.
    assert valid[0].source == stories[train.n_stories].examples[0].source
  # A task whose stories hold unequal numbers of questions: the cut moves back to a story start.
  train, valid = load_babi(BABI, 20, 'train'), load_babi(BABI, 20, 'valid')
  assert (len(train), len(valid)) == (8_990, 1_010)
  assert (train.n_stories, valid.n_stories) == (839, 94)
  assert load_babi(BABI, 1, 'validation').examples == load_babi(BABI, 1, 'valid').examples


@shipped
def test_hand_checked_examples():
  qa1 = read_babi_file(QA1)
  assert qa1[0] == BabiExample(
      task=1, story=('Mary moved to the bathroom.', 'John went to the hallway.'),
      question='Where is Mary?', answer='bathroom', supporting=(0,),
      source='en-10k/qa1_single-supporting-fact_train.txt.gz:3')
  # Line 6 'Where is Daniel? hallway 4': the question on line 3 is not part of the story, so
  # statement line 4 is story index 2.
  assert qa1[1].story == ('Mary moved to the bathroom.', 'John went to the hallway.',
                          'Daniel went back to the hallway.', 'Sandra moved to the garden.')
  assert (qa1[1].question, qa1[1].answer, qa1[1].supporting) == ('Where is Daniel?', 'hallway',
                                                                 (2,))
  # QA2 test line 11: 'Where is the football? hallway 9 7' (supporting ids in file order).
  qa2 = read_babi_file(os.path.join(BABI, 'en-10k', 'qa2_two-supporting-facts_test.txt.gz'))
  ex = qa2[2]
  assert ex.source == 'en-10k/qa2_two-supporting-facts_test.txt.gz:11'
  assert ex.story == ('Mary got the milk there.', 'John moved to the bedroom.',
                      'Sandra went back to the kitchen.', 'Mary travelled to the hallway.',
                      'John got the football there.', 'John went to the hallway.',
                      'John put down the football.', 'Mary went to the garden.')
  assert (ex.question, ex.answer, ex.supporting) == ('Where is the football?', 'hallway', (6, 5))
  # QA8 test line 16: a list answer, kept as the file's string and split by `answers`.
  qa8 = read_babi_file(os.path.join(BABI, 'en-10k', 'qa8_lists-sets_test.txt.gz'))
  ex = next(e for e in qa8 if e.source.endswith(':16'))
  assert ex.answer == 'football,apple' and ex.answers == ('football', 'apple')
  assert ex.question == 'What is John carrying?' and len(ex.story) == 12
  assert [ex.story[i] for i in ex.supporting] == ['John picked up the football there.',
                                                  'John picked up the apple there.']


@shipped
@pytest.mark.parametrize('task', range(1, 21))
def test_supporting_facts_inside_story_before_question(task):
  """Checked against an independent parse of the raw lines, for every test file and the paper
  tasks' training files: the story is exactly the statements before the question (none dropped,
  no question lines), and each supporting index points at the statement with that line id."""
  parts = ['test', 'train'] if task in babi.PAPER_TASKS else ['test']
  for part in parts:
    path = load_babi(BABI, task, part if part == 'test' else 'train').path
    got = read_babi_file(path)
    raw = _raw_questions(path)
    assert len(got) == len(raw)
    for ex, (lineno, number, statements, ids, question, answer) in zip(got, raw):
      assert ex.source.endswith(f':{lineno}')
      assert (ex.question, ex.answer) == (question, answer)
      assert ex.story == tuple(statements[k] for k in sorted(statements))
      assert all(k < number for k in ids)  # supporting facts precede the question
      assert all(0 <= i < len(ex.story) for i in ex.supporting)
      assert [ex.story[i] for i in ex.supporting] == [statements[k] for k in ids]


@shipped
def test_qa3_fallback_is_reported(caplog):
  with caplog.at_level(logging.WARNING):
    train = load_babi(BABI, 3, 'train')
  assert train.variant == 'en' and train.path.endswith(
      os.path.join('en', 'qa3_three-supporting-facts_train.txt.gz'))
  assert 'en-10k/qa3_three-supporting-facts_train' in train.fallback
  assert 'read en/qa3_three-supporting-facts_train.txt.gz instead' in train.fallback
  assert train.fallback in train.summary
  assert any('QA3' in r.getMessage() and 'missing' in r.getMessage() for r in caplog.records)
  # Files that exist are read from en-10k, without a note.
  for task, split in ((3, 'test'), (1, 'train'), (1, 'valid')):
    s = load_babi(BABI, task, split)
    assert s.variant == 'en-10k' and s.fallback == ''
  # A 1k setup on request, no fallback involved.
  s = load_babi(BABI, 3, 'valid', variant='en')
  assert (len(s), s.fallback) == (100, '')


# ------------------------------------------------------------------------------------------------
# Errors: data.babi_dir, the path and the layout are named; nothing is read partially.


def _write_gz(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.open(path, 'wb') as f:
    f.write(data)


def _qa1_dir(tmp_path, train: bytes = None, raw_train: bytes = None):
  """A layout with en-10k QA1 files: the shipped ones unless replaced."""
  d = tmp_path / 'babi'
  (d / 'en-10k').mkdir(parents=True)
  shutil.copy(os.path.join(BABI, 'en-10k', 'qa1_single-supporting-fact_test.txt.gz'), d / 'en-10k')
  target = d / 'en-10k' / 'qa1_single-supporting-fact_train.txt.gz'
  if raw_train is not None:
    target.write_bytes(raw_train)
  elif train is not None:
    _write_gz(str(target), train)
  else:
    shutil.copy(QA1, target)
  return str(d)


LAYOUT_HINT = 'en-10k/qa1_single-supporting-fact_train.txt.gz'


def test_missing_dir_names_the_field_and_layout(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError) as e:
    load_babi(missing, 1, 'train')
  assert 'data.babi_dir' in str(e.value) and missing in str(e.value)
  assert LAYOUT_HINT in str(e.value)
  with pytest.raises(ValueError, match='data.babi_dir'):
    load_babi('', 1, 'train')


def test_missing_file_names_both_variants(tmp_path):
  (tmp_path / 'en-10k').mkdir()
  with pytest.raises(FileNotFoundError) as e:
    load_babi(str(tmp_path), 2, 'test')
  msg = str(e.value)
  assert 'data.babi_dir' in msg and LAYOUT_HINT in msg
  assert os.path.join(str(tmp_path), 'en-10k', 'qa2_two-supporting-facts_test.txt[.gz]') in msg
  assert os.path.join(str(tmp_path), 'en', 'qa2_two-supporting-facts_test.txt[.gz]') in msg


def test_bad_arguments():
  with pytest.raises(ValueError, match='task 21'):
    load_babi(BABI, 21, 'train')
  with pytest.raises(ValueError, match="split 'dev'"):
    load_babi(BABI, 1, 'dev')
  with pytest.raises(ValueError, match="variant 'hn'"):
    load_babi(BABI, 1, 'test', variant='hn')


@shipped
@pytest.mark.parametrize('case', ['empty_gzip', 'zero_bytes', 'truncated_gzip', 'not_gzip',
                                  'wrong_format', 'cut_at_line', 'cut_mid_line',
                                  'story_without_question', 'ends_with_statement',
                                  'bad_supporting_id', 'numbering'])
def test_broken_files_are_errors(tmp_path, case):
  with gzip.open(QA1, 'rb') as f:
    good = f.read()
  lines = good.decode().split('\n')
  compressed = open(QA1, 'rb').read()
  kwargs = {
      'empty_gzip': dict(train=b''),
      'zero_bytes': dict(raw_train=b''),
      'truncated_gzip': dict(raw_train=compressed[:len(compressed) // 2]),
      'not_gzip': dict(raw_train=b'1 Mary moved to the bathroom.\n'),
      'wrong_format': dict(train=b'hello world\n'),
      'cut_at_line': dict(train=('\n'.join(lines[:300]) + '\n').encode()),   # ends on a question
      'cut_mid_line': dict(train=good[:5000]),
      'story_without_question': dict(train=('\n'.join(lines[:15] + ['1 Mary went home.']) + '\n'
                                             ).encode()),
      'ends_with_statement': dict(train=('\n'.join(lines[:13]) + '\n').encode()),
      'bad_supporting_id': dict(train=good.replace(b'bathroom\t1\n', b'bathroom\t3\n', 1)),
      'numbering': dict(train=good.replace(b'\n4 Daniel', b'\n5 Daniel', 1)),
  }[case]
  d = _qa1_dir(tmp_path, **kwargs)
  path = os.path.join(d, 'en-10k', 'qa1_single-supporting-fact_train.txt.gz')
  with pytest.raises(ValueError) as e:
    load_babi(d, 1, 'train')
  msg = str(e.value)
  assert 'data.babi_dir' in msg and path in msg and LAYOUT_HINT in msg, msg
  detail = {'cut_at_line': '100 questions', 'story_without_question': 'without a question',
            'ends_with_statement': 'ends with a statement',
            'bad_supporting_id': 'supporting id 3', 'numbering': 'line number 5 after 3',
            'cut_mid_line': 'no newline at the end', 'empty_gzip': 'empty',
            'zero_bytes': 'empty'}.get(case)
  if detail:
    assert detail in msg, msg
  # The test file of the same directory still reads: errors are about the broken file only.
  assert len(load_babi(d, 1, 'test')) == 1_000


# ------------------------------------------------------------------------------------------------
# Rendering and the word tokenizer.


def test_render():
  ex = BabiExample(1, ('Mary moved to the bathroom.', 'John went to the hallway.'),
                   'Where is Mary?', 'bathroom', (0,), 'x:3')
  assert render_story(ex.story) == 'Mary moved to the bathroom. John went to the hallway.'
  assert render_example(ex, sep='\n') == (
      'Mary moved to the bathroom.\nJohn went to the hallway.', 'Where is Mary?', 'bathroom')


@shipped
def test_word_tokenizer_round_trip_and_vocabulary():
  train = load_babi(BABI, 1, 'train').examples
  tok = BabiWordTokenizer.from_examples(train, extra_texts=['Question:', '\nAnswer:'])
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.vocab_size == len(tok.pieces) + 4 and list(tok.pieces) == sorted(tok.pieces)
  # Deterministic: the vocabulary does not depend on the order of the examples.
  assert BabiWordTokenizer.from_examples(train[::-1], extra_texts=['\nAnswer:', 'Question:']
                                         ).pieces == tok.pieces
  for ex in load_babi(BABI, 1, 'test').examples[:300]:
    for sep in (' ', '\n'):
      prompt = 'Question: ' + ex.question + '\nAnswer: ' + ex.answer
      for text in render_example(ex, sep) + (prompt,):
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and (ids > tok.unk_id).all(), text
        assert tok.decode(ids) == text
  ids = tok.encode('Mary moved to the bathroom.')
  assert len(ids) == 6  # 'Mary' ' moved' ' to' ' the' ' bathroom' '.'
  # Unknown words map to <unk>, visibly; pad/bos/eos are skipped on request only.
  unk = tok.encode('Mary flew to Mars.')
  assert (unk == tok.unk_id).sum() == 2 and tok.decode(unk) == 'Mary<unk> to<unk>.'
  with_specials = np.concatenate([[tok.bos_id], ids, [tok.eos_id, tok.pad_id]])
  assert tok.decode(with_specials) == 'Mary moved to the bathroom.'
  assert tok.decode(with_specials, skip_special=False) == \
      '<bos>Mary moved to the bathroom.<eos><pad>'
  with pytest.raises(ValueError, match='outside the vocabulary'):
    tok.decode([tok.vocab_size])


# ------------------------------------------------------------------------------------------------
# Text reconstruction.


def _check_spans(result, docs, tok, cfg):
  by_key = {d.key: d for d in docs}
  for span in result.train + result.valid:
    assert cfg.min_len <= len(span.ids) <= cfg.max_len
    assert tok.decode(span.ids) == span.text                                   # ids -> text
    assert by_key[span.document].text[span.start:span.start + len(span.text)] == span.text
    assert np.array_equal(tok.encode(span.text), span.ids)                     # text -> ids
  train_groups = {s.group for s in result.train}
  valid_groups = {s.group for s in result.valid}
  assert not train_groups & valid_groups
  assert valid_groups <= result.val_groups
  train_docs = {s.document for s in result.train}
  assert not train_docs & {s.document for s in result.valid}


@pytest.mark.skipif(not os.path.exists(SQUAD), reason='../shared/data/squad is not here')
def test_textrec_squad_spans_round_trip_and_split_by_article():
  docs = squad_documents(SQUAD)
  assert len(docs) == 2067 and len({d.group for d in docs}) == 48
  tok, cfg = ByteTokenizer(), TextRecConfig()
  result = extract_spans(docs, tok, cfg)
  _check_spans(result, docs, tok, cfg)
  assert len(result.val_groups) == 5 and len(result.valid) > 100 and len(result.train) > 1000
  lengths = [len(s.ids) for s in result.train]
  assert min(lengths) == 8 and max(lengths) == 64
  # Deterministic.
  again = extract_spans(docs, tok, cfg)
  assert [(s.document, s.start, s.text) for s in again.train] == \
      [(s.document, s.start, s.text) for s in result.train]
  # Spans of one paragraph do not overlap and start at sentence starts.
  first = [s for s in result.train if s.document == result.train[0].document]
  doc = next(d for d in docs if d.key == first[0].document)
  for a, b in zip(first, first[1:]):
    assert a.start + len(a.text) <= b.start
  assert all(s.start in doc.starts for s in first)


@pytest.mark.skipif(not os.path.exists(SQUAD), reason='../shared/data/squad is not here')
def test_textrec_with_a_bpe_tokenizer():
  """Any tokenizer with encode/decode: a byte-level BPE (GPT-2 style) trained here on SQuAD text."""
  tokenizers = pytest.importorskip('tokenizers')
  docs = squad_documents(SQUAD)[:200]
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator([d.text for d in docs], tokenizers.trainers.BpeTrainer(
      vocab_size=1000, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))

  class Tok:
    def encode(self, text):
      return np.asarray(bpe.encode(text).ids, np.int32)

    def decode(self, ids):
      return bpe.decode([int(i) for i in ids])

  tok, cfg = Tok(), TextRecConfig(min_len=8, max_len=32)
  result = extract_spans(docs, tok, cfg)
  _check_spans(result, docs, tok, cfg)
  assert len(result.train) > 300 and result.valid


@shipped
def test_textrec_babi_spans_with_the_word_tokenizer():
  docs = babi_documents(BABI, tasks=(1,), split='train')
  assert len(docs) == 1_800
  tok = BabiWordTokenizer.from_examples(load_babi(BABI, 1, 'train').examples)
  cfg = TextRecConfig(min_len=16, max_len=16)
  result = extract_spans(docs, tok, cfg)
  _check_spans(result, docs, tok, cfg)
  assert {len(s.ids) for s in result.train + result.valid} == {16}
  assert result.stats['rejected_starts'] == 0  # every piece of QA1 is in its own vocabulary


def test_textrec_never_truncates():
  tok = ByteTokenizer()
  text = 'One two three four. Five six seven eight nine ten.'
  cfg = TextRecConfig(min_len=20, max_len=20)
  stats = dict(short_tails=0, rejected_starts=0, documents_without_span=0)
  spans = document_spans(TextDocument('a', 'a', text, (0, 20)), tok, cfg, stats)
  # 'One two three four. ' is 20 bytes; the rest from 20 is 31 bytes: one more span, no tail.
  assert [s.text for s in spans] == ['One two three four. ', 'Five six seven eight']
  assert stats == dict(short_tails=0, rejected_starts=0, documents_without_span=0)
  # A document (or the rest of one) shorter than L gives no span, counted, never a shorter one.
  assert document_spans(TextDocument('b', 'b', 'Tiny.', (0,)), tok, cfg, stats) == []
  assert stats == dict(short_tails=1, rejected_starts=0, documents_without_span=1)
  spans = document_spans(TextDocument('c', 'c', text, (0, 20)), tok,
                         TextRecConfig(min_len=30, max_len=30), stats)
  assert [len(s.ids) for s in spans] == [30] and stats['short_tails'] == 1
  # A start whose L bytes end inside a UTF-8 character fails the round trip: skipped, counted.
  accent = TextDocument('d', 'd', 'Caf\u00e9 au lait. Fine day.', (0, 14))
  spans = document_spans(accent, tok, TextRecConfig(min_len=4, max_len=4), stats)
  assert stats['rejected_starts'] == 1 and [s.text for s in spans] == ['Fine']
  # extract_spans refuses when a split would be empty.
  with pytest.raises(ValueError, match='too short'):
    extract_spans([TextDocument('e', 'e', 'Small.', (0,)), TextDocument('f', 'f', 'Tiny.', (0,))],
                  tok, cfg)
  with pytest.raises(ValueError, match='min_len'):
    TextRecConfig(min_len=9, max_len=8).validate()
