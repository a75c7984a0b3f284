"""The text-reconstruction task (`data.task=textrec`, SPEC §3.5, paper App. I): WRITE a span of
L tokens of natural text (L uniform in [min_len, max_len], 8 .. 64 by default) into the memory and
reconstruct it from memory alone.

Sample:
  context  the span's tokens (cut by `textrec.extract_spans`: starts at a sentence start,
           round-trips through the tokenizer, never overlaps another span)
  query    `data.prompt` ('' by default: READ starts reconstructing right after the memory)
  target   the span's tokens again + EOS

Sources (`data.source`): bAbI stories (`data.babi_dir`, tasks `data.babi_tasks`, the stories of
`data.babi_split`), SQuAD paragraphs (`data.squad_path`), or both. The train / validation split is
by document group (SQuAD article, bAbI story), never by span.

Metrics: the teacher-forced evaluator gives token accuracy and exact span match (`em`) over every
span token and the EOS; `score_prediction` (eval.evaluators=generate) is the exact match of the
whole generated span (`gen_em`).

Tokenizers: 'words' (the bAbI word pieces, `babi.BabiWordTokenizer`, of the training documents: a
validation span with a word outside them does not round-trip and is not used, counted in the
summary's failed starts), 'bytes', a local Hugging Face tokenizer directory, or 'model' (the
checkpoint's, resolved by the runner).
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Optional, Sequence

import numpy as np

from gradmem_jax.data import babi, textrec
from gradmem_jax.data.babi_task import SHARED_BABI, bucket_length, round_up
from gradmem_jax.data.base import (TASKS, FixedSetStream, collate, exact_text_match,
                                   task_tokenizer, text_task)

# The shared SQuAD development set beside this checkout (../shared/data/squad).
SHARED_SQUAD = os.path.normpath(os.path.join(os.path.dirname(SHARED_BABI), 'squad',
                                             'dev-v1.1.json.gz'))
SOURCES = ('babi', 'squad', 'squad+babi')


@dataclasses.dataclass(frozen=True)
class TextRecSample:
  context: np.ndarray      # [L] int32: the span
  query: np.ndarray        # [q] int32: the prompt (may be empty)
  target: np.ndarray       # [L + 1] int32: the span + EOS
  qid: str                 # 'document key@character offset'
  span: textrec.TextSpan


@dataclasses.dataclass(frozen=True)
class TextRecTaskConfig:
  source: str = 'babi'                # babi (stories) | squad (paragraphs) | squad+babi
  babi_dir: str = SHARED_BABI         # the bAbI release (tasks_1-20_v1-2 English layout)
  babi_tasks: tuple = babi.PAPER_TASKS  # the bAbI tasks whose stories are used
  babi_split: str = 'train'           # the bAbI split whose stories are used (train | valid | test)
  babi_variant: str = 'en-10k'        # en-10k | en
  squad_path: str = SHARED_SQUAD      # a SQuAD JSON file (.json / .json.gz)
  tokenizer: str = 'words'            # words (pieces of the training documents) | bytes |
                                      # a local Hugging Face tokenizer dir | model (the checkpoint's)
  sep: str = ' '                      # joins a bAbI story's sentences
  min_len: int = 8                    # span length L in tokens, uniform in [min_len, max_len]
  max_len: int = 64
  val_fraction: float = 0.1           # share of document groups held out for validation
  split_seed: int = 0                 # which groups are held out
  length_seed: int = 0                # the span lengths
  max_spans_per_document: int = 0     # 0: every non-overlapping span of a document
  prompt: str = ''                    # the query text between memory and reconstruction ('' none)
  n_val: int = 0                      # at most this many validation spans, evenly spaced (0: all);
                                      # the summary says how many are scored
  seed: int = 0                       # training order
  context_len: int = 0                # static context length (0: the longest span, rounded to 8)
  qa_len: int = 0                     # static query+target length (0: fit the longest)
  bucket: int = 16                    # pad each batch's context to the next power of two >= this
                                      # (capped at context_len); 0: off
  length_window: int = 1024           # length-grouped training order, as in data.task=babi
  length_block: int = 64              # (0: plain shuffling)

  def __post_init__(self):
    object.__setattr__(self, 'babi_tasks', tuple(int(t) for t in self.babi_tasks))

  def validate(self) -> None:
    if self.source not in SOURCES:
      raise ValueError(f'data.source={self.source!r} is not known; allowed: {list(SOURCES)}')
    if 'babi' in self.source:
      if not self.babi_dir:
        raise ValueError(f'data.babi_dir is empty. Expected {babi.LAYOUT}')
      if not self.babi_tasks:
        raise ValueError('data.babi_tasks is empty: give bAbI task numbers (e.g. 1;2;3)')
      for t in self.babi_tasks:
        if t not in babi.TASK_NAMES:
          raise ValueError(f'data.babi_tasks: {t} is not a bAbI task; allowed: 1 .. 20')
      if self.babi_split not in babi.SPLITS:
        raise ValueError(f'data.babi_split={self.babi_split!r}; allowed: {list(babi.SPLITS)}')
      if self.babi_variant not in babi.VARIANTS:
        raise ValueError(f'data.babi_variant={self.babi_variant!r}; allowed: '
                         f'{list(babi.VARIANTS)}')
    if 'squad' in self.source and not self.squad_path:
      raise ValueError('data.squad_path is empty: give a SQuAD JSON file (for example '
                       '../shared/data/squad/dev-v1.1.json.gz)')
    if not self.tokenizer:
      raise ValueError('data.tokenizer is empty; allowed: words, bytes, model or a local '
                       'tokenizer directory')
    self.spans_config().validate()
    for f in ('n_val', 'context_len', 'qa_len', 'bucket', 'length_window', 'length_block'):
      if getattr(self, f) < 0:
        raise ValueError(f'data.{f} must be >= 0 (0: automatic / off), got {getattr(self, f)}')

  def spans_config(self) -> textrec.TextRecConfig:
    return textrec.TextRecConfig(self.min_len, self.max_len, self.val_fraction, self.split_seed,
                                 self.length_seed, self.max_spans_per_document)


def documents(cfg: TextRecTaskConfig) -> list[textrec.TextDocument]:
  docs = []
  if 'squad' in cfg.source:
    docs.extend(textrec.squad_documents(cfg.squad_path))
  if 'babi' in cfg.source:
    docs.extend(textrec.babi_documents(cfg.babi_dir, cfg.babi_tasks, cfg.babi_split,
                                       cfg.babi_variant, cfg.sep))
  return docs


@TASKS.register('textrec')
class TextRecTask(FixedSetStream):
  """Spans of natural text to write into memory and reconstruct."""
  config_cls: ClassVar[type] = TextRecTaskConfig
  stream_salt: ClassVar[int] = 17

  def __init__(self, cfg: TextRecTaskConfig):
    cfg.validate()
    self.cfg = cfg
    docs = documents(cfg)
    def words():
      held_out = textrec.split_groups((d.group for d in docs), cfg.val_fraction, cfg.split_seed)
      return babi.BabiWordTokenizer.from_texts(
          [d.text for d in docs if d.group not in held_out] + [cfg.prompt])
    text_task(self, task_tokenizer(cfg.tokenizer, words))
    tok = self.tokenizer
    self.spans = textrec.extract_spans(docs, tok, cfg.spans_config())
    self._prompt = np.asarray(tok.encode(cfg.prompt), np.int32) if cfg.prompt else np.zeros(
        (0,), np.int32)
    self.train_set = [self._sample(s) for s in self.spans.train]
    val = list(self.spans.valid)
    if cfg.n_val and cfg.n_val < len(val):  # a cap: how many spans there are depends on the
                                            # source, the tokenizer and the lengths
      val = [val[int(i)] for i in np.linspace(0, len(val), cfg.n_val, endpoint=False)]
    self._val = [self._sample(s) for s in val]
    self.context_len = self._static_len('context_len', lambda s: len(s.context))
    self.qa_len = self._static_len('qa_len', lambda s: len(s.query) + len(s.target))
    self.max_new_tokens = max(len(s.target) for s in self.train_set + self._val)

  def _sample(self, span: textrec.TextSpan) -> TextRecSample:
    target = np.concatenate([span.ids, [self.eos_id]]).astype(np.int32)
    return TextRecSample(np.asarray(span.ids, np.int32), self._prompt, target,
                         f'{span.document}@{span.start}', span)

  def _static_len(self, field: str, length) -> int:
    longest = max(self.train_set + self._val, key=length)
    want = getattr(self.cfg, field)
    if not want:
      return round_up(length(longest))
    if want < length(longest):
      raise ValueError(f'data.{field}={want} is shorter than span {longest.qid} '
                       f'({length(longest)} tokens); nothing is truncated: set data.{field} >= '
                       f'{length(longest)} or 0 (automatic)')
    return want

  # The Task interface ----------------------------------------------------------------------------

  def identity(self) -> dict:
    return {'task': 'textrec', 'span_len': f'{self.cfg.min_len}-{self.cfg.max_len}',
            'source': self.cfg.source}

  @property
  def summary(self) -> str:
    where = []
    if 'babi' in self.cfg.source:
      where.append(f'bAbI QA{",".join(map(str, self.cfg.babi_tasks))} {self.cfg.babi_split} '
                   'stories')
    if 'squad' in self.cfg.source:
      where.append(f'SQuAD paragraphs of {os.path.basename(self.cfg.squad_path)}')
    return (f'{self.spans.summary}; from {" and ".join(where)}; {len(self._val)} scored; '
            f'prompt {self.cfg.prompt!r}; tokenizer {self.tokenizer.name} (vocab '
            f'{self.vocab_size})')

  def score_prediction(self, sample: TextRecSample, prediction: str) -> dict:
    """{'gen_em': 1.0} when the generated text is the whole span (outer white space aside)."""
    return exact_text_match(prediction.strip(), sample.span.text.strip())

  def validation_set(self) -> list[TextRecSample]:
    return self._val

  def collate(self, samples: Sequence[TextRecSample], batch_size: Optional[int] = None) -> dict:
    c = bucket_length(max(len(s.context) for s in samples), self.context_len, self.cfg.bucket)
    return collate(samples, self.pad_id, batch_size=batch_size, context_len=c, qa_len=self.qa_len)


__all__ = ['TextRecTask', 'TextRecTaskConfig', 'TextRecSample', 'SHARED_SQUAD', 'SOURCES']
