"""The bAbI QA task (`data.task=babi`, SPEC §3.2): WRITE the story into memory, answer the question
from memory alone. Reading, splitting and the word tokenizer are in `babi.py`.

Sample (one per question, the paper's setting):
  context  the story: every statement before the question, joined with `data.sep`
           (`data.max_story_sentences` may keep only the last N, see below)
  query    `data.query_template` with the question   (default '{question} Answer:')
  target   `data.target_template` with the answer, + EOS   (default ' {answer}')

Splits: train = `load_babi(..., 'train')` (the first 9k questions of the en-10k training file),
validation = `data.eval_split` ('valid': the held-out last 1k of that file, the default; 'test': the
test file, for the final numbers). A task whose en-10k file is missing (QA3 training on our machines)
is read from `en` (900 / 100 questions): `summary` says so.

Story cutting: the story is cut at the question (earlier question lines are never part of it); with
`data.max_story_sentences=N` only the last N statements are kept, moved back so that the earliest
supporting fact is always inside. Nothing else is ever dropped: static lengths fit the longest
sample, and a smaller `data.context_len` / `data.qa_len` is an error naming the question.

Scoring: teacher-forced EM / token accuracy over every answer token and the EOS (ignore_ids is
empty); `score_prediction` (for `eval.evaluators=generate`) is the exact match of the normalised
answer text (`gen_em`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Optional, Sequence

import numpy as np

from gradmem_jax.data import babi
from gradmem_jax.data.base import (TASKS, FixedSetStream, collate, exact_text_match,
                                   task_tokenizer, text_task)

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The shared copy of the bAbI release beside this checkout (../shared/data/babi).
SHARED_BABI = os.path.normpath(os.path.join(_ROOT, '..', 'shared', 'data', 'babi'))
EVAL_SPLITS = ('valid', 'test')


# ------------------------------------------------------------------------------------------------
# Shared by the natural-language tasks (babi, textrec).


def round_up(n: int, k: int = 8) -> int:
  return -(-n // k) * k


def bucket_length(length: int, cap: int, smallest: int) -> int:
  """The next power of two >= max(length, smallest), capped at `cap` (`smallest`=0: `cap`)."""
  if not smallest:
    return cap
  b = smallest
  while b < length:
    b *= 2
  return min(b, cap)


def normalize_text(text: str) -> str:
  """Lower case, white space collapsed, a final full stop dropped ('Kitchen.' == 'kitchen')."""
  text = ' '.join(text.lower().split())
  return text[:-1].rstrip() if text.endswith('.') else text


# ------------------------------------------------------------------------------------------------
# The task.


@dataclasses.dataclass(frozen=True)
class BabiSample:
  context: np.ndarray      # [S] int32: the rendered story
  query: np.ndarray        # [q] int32: the question with its template
  target: np.ndarray       # [t] int32: the answer with its template + EOS
  qid: str                 # where the question is: 'en-10k/qa1_..._train.txt.gz:3'
  example: babi.BabiExample
  first_sentence: int      # index in example.story of the first statement in the context


@dataclasses.dataclass(frozen=True)
class BabiTaskConfig:
  babi_dir: str = SHARED_BABI         # the bAbI release (tasks_1-20_v1-2 English layout)
  task_id: int = 1                    # bAbI task 1 .. 20 (the paper: QA1 .. QA5)
  variant: str = 'en-10k'             # en-10k (the paper's 9k/1k/1k) | en (the 1k variant)
  eval_split: str = 'valid'           # what validation_set() holds: valid (1k held out) | test
  tokenizer: str = 'words'            # words (bAbI word pieces of the training split) | bytes |
                                      # a local Hugging Face tokenizer dir | model (the checkpoint's)
  sep: str = ' '                      # joins the story's sentences (' ' running text, '\n' lines)
  query_template: str = '{question} Answer:'  # the query text ({question}: the file's question)
  target_template: str = ' {answer}'  # the target text before EOS ({answer}: the file's answer)
  max_story_sentences: int = 0        # keep only the last N statements (extended back to the
                                      # earliest supporting fact); 0: the whole story
  n_val: int = 0                      # validation questions, evenly spaced (0: all 1,000)
  seed: int = 0                       # training order
  context_len: int = 0                # static context length (0: fit the longest, rounded up to 8)
  qa_len: int = 0                     # static query+target length (0: fit the longest)
  bucket: int = 32                    # pad each batch's context to the next power of two >= this
                                      # (capped at context_len; one compile per bucket); 0: off
  length_window: int = 1024           # sort each window of this many shuffled training samples by
                                      # context length and shuffle blocks of `length_block` within
  length_block: int = 64              # it, so batches hold similar lengths (0: plain shuffling)

  def validate(self) -> None:
    if not self.babi_dir:
      raise ValueError(f'data.babi_dir is empty. Expected {babi.LAYOUT}')
    if self.task_id not in babi.TASK_NAMES:
      raise ValueError(f'data.task_id={self.task_id} is not a bAbI task; allowed: 1 .. 20 (the '
                       f'paper: {list(babi.PAPER_TASKS)})')
    if self.variant not in babi.VARIANTS:
      raise ValueError(f'data.variant={self.variant!r} is not known; allowed: {list(babi.VARIANTS)}')
    if self.eval_split not in EVAL_SPLITS:
      raise ValueError(f'data.eval_split={self.eval_split!r} is not known; allowed: '
                       f'{list(EVAL_SPLITS)}')
    if not self.tokenizer:
      raise ValueError('data.tokenizer is empty; allowed: words, bytes, model or a local '
                       'tokenizer directory')
    if '{question}' not in self.query_template:
      raise ValueError(f'data.query_template={self.query_template!r} must contain {{question}}')
    if '{answer}' not in self.target_template:
      raise ValueError(f'data.target_template={self.target_template!r} must contain {{answer}}')
    for f in ('max_story_sentences', 'n_val', 'context_len', 'qa_len', 'bucket', 'length_window',
              'length_block'):
      if getattr(self, f) < 0:
        raise ValueError(f'data.{f} must be >= 0 (0: automatic / off), got {getattr(self, f)}')


def story_start(ex: babi.BabiExample, max_sentences: int) -> int:
  """Index of the first statement kept: the last `max_sentences` (0: all), moved back to the
  earliest supporting fact so that no fact the answer depends on is dropped."""
  if not max_sentences:
    return 0
  return max(0, min(len(ex.story) - max_sentences, min(ex.supporting)))


@TASKS.register('babi')
class BabiTask(FixedSetStream):
  """bAbI QA: the story (up to the question, every supporting fact kept) is written into memory,
  the question is asked of the memory alone, the answer is the target."""
  config_cls: ClassVar[type] = BabiTaskConfig
  stream_salt: ClassVar[int] = 13

  def __init__(self, cfg: BabiTaskConfig):
    cfg.validate()
    self.cfg = cfg
    self.train_split = babi.load_babi(cfg.babi_dir, cfg.task_id, 'train', cfg.variant)
    self.eval_split = babi.load_babi(cfg.babi_dir, cfg.task_id, cfg.eval_split, cfg.variant)
    prompts = [cfg.query_template.replace('{question}', ''),
               cfg.target_template.replace('{answer}', '')]
    text_task(self, task_tokenizer(cfg.tokenizer, lambda: babi.BabiWordTokenizer.from_examples(
        self.train_split.examples, cfg.sep, extra_texts=prompts)))
    tok = self.tokenizer
    self.train_set = [self._encode(ex) for ex in self.train_split]
    val = list(self.eval_split)
    if cfg.n_val > len(val):
      raise ValueError(f'data.n_val={cfg.n_val} exceeds the {len(val)} {cfg.eval_split} questions '
                       f'of bAbI QA{cfg.task_id}')
    if cfg.n_val:
      val = [val[int(i)] for i in np.linspace(0, len(val), cfg.n_val, endpoint=False)]
    self._val = [self._encode(ex) for ex in val]
    every = self.train_set + self._val
    self.n_unknown = sum(int(np.sum(np.concatenate([s.context, s.query, s.target]) == tok.unk_id))
                         for s in every) if hasattr(tok, 'unk_id') else 0
    self.context_len = self._static_len('context_len', lambda s: len(s.context))
    self.qa_len = self._static_len('qa_len', lambda s: len(s.query) + len(s.target))
    self.max_new_tokens = max(len(s.target) for s in every)

  def _static_len(self, field: str, length) -> int:
    every = self.train_set + self._val
    longest = max(every, key=length)
    want = getattr(self.cfg, field)
    if not want:
      return round_up(length(longest))
    if want < length(longest):
      ex = longest.example
      raise ValueError(f'data.{field}={want} is shorter than question {longest.qid} '
                       f'({ex.question!r}, {length(longest)} tokens); nothing is truncated: set '
                       f'data.{field} >= {length(longest)} or 0 (automatic)')
    return want

  def _encode(self, ex: babi.BabiExample) -> BabiSample:
    tok, cfg = self.tokenizer, self.cfg
    first = story_start(ex, cfg.max_story_sentences)
    context = tok.encode(babi.render_story(ex.story[first:], cfg.sep))
    query = tok.encode(cfg.query_template.replace('{question}', ex.question))
    answer = tok.encode(cfg.target_template.replace('{answer}', ex.answer))
    target = np.concatenate([answer, [tok.eos_id]]).astype(np.int32)
    return BabiSample(np.asarray(context, np.int32), np.asarray(query, np.int32), target,
                      ex.source, ex, first)

  # The Task interface ----------------------------------------------------------------------------

  def identity(self) -> dict:
    out = {'task': 'babi', 'babi_task': self.cfg.task_id}
    if self.cfg.variant != 'en-10k':
      out['variant'] = self.cfg.variant
    if self.cfg.eval_split != 'valid':
      out['eval_split'] = self.cfg.eval_split
    if self.cfg.max_story_sentences:  # cut stories are another task (validation is cut too)
      out['max_story_sentences'] = self.cfg.max_story_sentences
    return out

  @property
  def summary(self) -> str:
    c = self.cfg
    notes = [s.fallback for s in (self.train_split, self.eval_split) if s.fallback]
    note = f' [fallback: {notes[0]}]' if notes else ''
    cut = f', last {c.max_story_sentences} statements' if c.max_story_sentences else ''
    unk = f', {self.n_unknown} unknown tokens' if self.n_unknown else ''
    return (f'bAbI QA{c.task_id} ({babi.TASK_NAMES[c.task_id]}, {self.train_split.variant}): '
            f'{len(self.train_set)} train / {len(self._val)} {c.eval_split} questions, context_len '
            f'{self.context_len}{cut}, qa_len {self.qa_len}, tokenizer {self.tokenizer.name} '
            f'(vocab {self.vocab_size}){unk}{note}')

  def score_prediction(self, sample: BabiSample, prediction: str) -> dict:
    """{'gen_em': 1.0} when the normalised prediction equals the normalised answer."""
    return exact_text_match(normalize_text(prediction), normalize_text(sample.example.answer))

  def validation_set(self) -> list[BabiSample]:
    return self._val

  def collate(self, samples: Sequence[BabiSample], batch_size: Optional[int] = None) -> dict:
    c = bucket_length(max(len(s.context) for s in samples), self.context_len, self.cfg.bucket)
    return collate(samples, self.pad_id, batch_size=batch_size, context_len=c, qa_len=self.qa_len)


__all__ = ['BabiTask', 'BabiTaskConfig', 'BabiSample', 'SHARED_BABI', 'story_start',
           'normalize_text', 'bucket_length', 'round_up']
