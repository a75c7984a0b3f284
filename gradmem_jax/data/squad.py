"""Short SQuAD (SPEC §3.3): WRITE the sentence(s) holding the answer, answer the question from
memory; plus the official SQuAD answer normalisation, EM and F1.

Data: the official SQuAD JSON layout (`.json` or `.json.gz`; v1.1 or v2.0). Nothing is downloaded.
This machine ships only the development sets (`../shared/data/squad`), so the train/validation split
is made *by article* (never by question: no paragraph is in both splits), deterministically from
`data.split_seed`.

Sample:  context `<sentence(s) containing the answer span>`   (the whole paragraph with
         `data.context=paragraph`)
         query   `Question: <question>\\nAnswer:`              target ` <answer><eos>`
Unanswerable SQuAD 2.0 questions get an empty answer (target `<eos>`) and need
`data.context=paragraph` (there is no answer sentence to cut to).

Nothing is truncated: static lengths fit the longest sample, and a smaller `data.context_len` /
`data.qa_len` is an error naming the sample.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
import os
import re
import string
from typing import ClassVar, Optional, Sequence

import numpy as np

from gradmem_jax.data.base import TASKS, FixedSetStream, collate
from gradmem_jax.data.text import make_tokenizer

CONTEXT_MODES = ('sentence', 'paragraph')


# ------------------------------------------------------------------------------------------------
# Official answer normalisation and scores.


def normalize_answer(text: str) -> str:
  """Lower case, drop punctuation and the articles a/an/the, collapse white space."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def exact_match(prediction: str, truths: Sequence[str]) -> float:
  truths = list(truths) or ['']
  return float(max(normalize_answer(prediction) == normalize_answer(t) for t in truths))


def _f1(prediction: str, truth: str) -> float:
  p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
  if not p or not t:
    return float(p == t)
  common = collections.Counter(p) & collections.Counter(t)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(t)
  return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, truths: Sequence[str]) -> float:
  truths = list(truths) or ['']
  return max(_f1(prediction, t) for t in truths)


# ------------------------------------------------------------------------------------------------
# Reading the JSON.


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
  qid: str
  title: str
  paragraph: str
  question: str
  answers: tuple[str, ...]      # every gold answer text (empty for unanswerable)
  answer_start: int             # of answers[0] in paragraph (-1 for unanswerable)


def _need(node, key: str, kind, where: str):
  if not isinstance(node, dict) or key not in node:
    raise ValueError(f'{where}: missing field {key!r} (official SQuAD JSON layout expected)')
  value = node[key]
  if not isinstance(value, kind):
    raise ValueError(f'{where}.{key}: expected {kind.__name__}, got {type(value).__name__}')
  return value


def _read_squad_json(path: str):
  """The parsed JSON of a SQuAD file, gzipped or not; ValueError naming the path and the problem
  for a truncated or corrupt gzip stream, an empty file, bytes that are not UTF-8 or text that is
  not JSON."""
  import zlib  # (local: only this reader needs it)

  def bad(problem: str) -> ValueError:
    return ValueError(f'data.path={path!r}: not readable as SQuAD JSON (official layout, '
                      f'optionally gzipped): {problem}')
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise bad(f'cannot read the file ({e})') from e
  if not raw:
    raise bad('the file is empty (0 bytes: an interrupted copy or download?)')
  # Decided by content, not by name: gzip streams start with the bytes 1f 8b.
  if raw[:2] == b'\x1f\x8b':
    try:
      raw = gzip.decompress(raw)
    except EOFError as e:
      raise bad('the gzip stream is truncated (it ends before its end marker: an interrupted copy '
                'or download?)') from e
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      raise bad(f'corrupt gzip data ({e})') from e
  elif path.endswith('.gz'):
    raise bad(f'the name ends in .gz but the file is not gzip-compressed (it starts with '
              f'{raw[:16]!r})')
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise bad(f'not UTF-8 text ({e})') from e
  if not text.strip():
    raise bad('it holds only white space')
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    hint = ' (the text ends early: truncated?)' if e.pos >= len(text.rstrip()) else ''
    raise bad(f'invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}') from e


def load_squad(path: str) -> list[SquadQuestion]:
  """Every question of a SQuAD JSON file (official layout), in file order, validated.

  Every damage to the file (empty, truncated, not gzip though named .gz, not JSON, JSON of another
  shape) is a ValueError naming the path and what is expected."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'data.path={path!r}: no such file (a SQuAD .json or .json.gz; this '
                            'machine has ../shared/data/squad/dev-v1.1.json.gz)')
  root = _read_squad_json(path)
  if not isinstance(root, dict) or not isinstance(root.get('data'), list):
    kinds = {list: 'a JSON array', str: 'a JSON string', int: 'a JSON number',
             float: 'a JSON number', bool: 'a JSON boolean', type(None): 'JSON null',
             dict: 'a JSON object'}
    got = (kinds.get(type(root), type(root).__name__) if not isinstance(root, dict) else
           'an object without a "data" list' if 'data' not in root else
           f'an object whose "data" is {kinds.get(type(root["data"]), "not a list")}')
    raise ValueError(f'data.path={path!r}: expected the official SQuAD layout, a JSON object '
                     '{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}, '
                     f'got {got}')
  out = []
  seen = set()
  for a, art in enumerate(_need(root, 'data', list, path)):
    where_a = f'{path}: data[{a}]'
    title = _need(art, 'title', str, where_a)
    for p, para in enumerate(_need(art, 'paragraphs', list, where_a)):
      where_p = f'{where_a}.paragraphs[{p}]'
      context = _need(para, 'context', str, where_p)
      for q, qa in enumerate(_need(para, 'qas', list, where_p)):
        where_q = f'{where_p}.qas[{q}]'
        qid = _need(qa, 'id', str, where_q)
        if qid in seen:
          raise ValueError(f'{where_q}: duplicate question id {qid!r}')
        seen.add(qid)
        question = _need(qa, 'question', str, where_q)
        answers = _need(qa, 'answers', list, where_q)
        impossible = bool(qa.get('is_impossible', False))
        if not answers and not impossible:
          raise ValueError(f'{where_q} (id {qid}): no answers and not marked is_impossible')
        texts, start = [], -1
        for i, ans in enumerate(answers):
          text = _need(ans, 'text', str, f'{where_q}.answers[{i}]')
          s = _need(ans, 'answer_start', int, f'{where_q}.answers[{i}]')
          if context[s:s + len(text)] != text:
            raise ValueError(f'{where_q}.answers[{i}] (id {qid}): answer_start={s} does not point '
                             f'at the answer text {text!r} in the paragraph')
          texts.append(text)
          if i == 0:
            start = s
        out.append(SquadQuestion(qid, title, context, question, tuple(texts),
                                 start if texts else -1))
  if not out:
    raise ValueError(f'data.path={path!r}: the file holds no questions')
  return out


def sentence_spans(text: str) -> list[tuple[int, int]]:
  """[start, end) character spans of sentences: a break after . ! or ? followed by white space."""
  spans, start = [], 0
  for m in re.finditer(r'[.!?]+["\')\]]*(?=\s)', text):
    end = m.end()
    spans.append((start, end))
    start = end
  spans.append((start, len(text)))
  # Strip the white space between sentences; drop empty spans.
  out = []
  for s, e in spans:
    while s < e and text[s].isspace():
      s += 1
    if s < e:
      out.append((s, e))
  return out


def answer_sentences(paragraph: str, start: int, length: int) -> str:
  """The sentence(s) that overlap the answer span [start, start + length): always contains it."""
  spans = [(s, e) for s, e in sentence_spans(paragraph) if s < start + max(length, 1) and e > start]
  lo, hi = spans[0][0], spans[-1][1]
  return paragraph[lo:hi]


# ------------------------------------------------------------------------------------------------
# The task.


@dataclasses.dataclass(frozen=True)
class SquadSample:
  context: np.ndarray      # [S] int32
  query: np.ndarray        # [q] int32
  target: np.ndarray       # [t] int32 (answer + eos)
  qid: str
  answers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SquadTaskConfig:
  path: str = ''                 # SQuAD JSON (.json / .json.gz)
  tokenizer: str = 'bytes'       # 'bytes' or a local Hugging Face tokenizer directory
  context: str = 'sentence'      # sentence (short SQuAD) | paragraph
  val_fraction: float = 0.1      # share of articles held out for validation
  split_seed: int = 0            # which articles are held out
  seed: int = 0                  # training order
  context_len: int = 0           # static context length (0: fit the longest, rounded up to 8)
  qa_len: int = 0                # static query+target length (0: fit the longest)
  n_val: int = 0                 # validation questions (0: all held-out questions)
  bucket: bool = True            # pad each batch's context to the next power of two (>= 64), not
                                 # the longest of the set (one compilation per bucket)
  length_window: int = 1024      # sort each window of this many shuffled training samples by
                                 # context length and shuffle blocks of `length_block` within it,
  length_block: int = 64         # so batches hold similar lengths (0: plain shuffling)
  question_prefix: str = 'Question: '
  answer_prefix: str = '\nAnswer:'

  def validate(self) -> None:
    if not self.path:
      raise ValueError('data.path is empty: give a SQuAD JSON file (for example '
                       '../shared/data/squad/dev-v1.1.json.gz)')
    if self.context not in CONTEXT_MODES:
      raise ValueError(f'data.context={self.context!r} is not known; allowed: {list(CONTEXT_MODES)}')
    if not 0 < self.val_fraction < 1:
      raise ValueError(f'data.val_fraction must be in (0, 1), got {self.val_fraction}')
    for f in ('context_len', 'qa_len', 'n_val', 'length_window', 'length_block'):
      if getattr(self, f) < 0:
        raise ValueError(f'data.{f} must be >= 0 (0: automatic), got {getattr(self, f)}')
    if not self.tokenizer:
      raise ValueError('data.tokenizer is empty; allowed: "bytes" or a local tokenizer directory')


def _round_up(n: int, k: int = 8) -> int:
  return -(-n // k) * k


@TASKS.register('squad')
class SquadTask(FixedSetStream):
  """Short-SQuAD samples (the answer sentences of a SQuAD JSON file, or whole paragraphs), split
  into training and validation by article."""
  config_cls: ClassVar[type] = SquadTaskConfig
  stream_salt: ClassVar[int] = 11

  def __init__(self, cfg: SquadTaskConfig):
    super().__init__(cfg, make_tokenizer(cfg.tokenizer))
    tok = self.tokenizer
    self.eos_id = tok.eos_id
    self.ignore_ids = ()              # every answer token and the EOS are scored
    self.stop_ids = (tok.eos_id,)
    questions = load_squad(cfg.path)
    titles = sorted({q.title for q in questions})
    if len(titles) < 2:
      raise ValueError(f'data.path={cfg.path!r}: {len(titles)} article(s); a split by article needs '
                       'at least 2')
    rank = lambda t: hashlib.blake2b(f'{cfg.split_seed}:{t}'.encode(), digest_size=8).digest()
    n_val_articles = min(len(titles) - 1, max(1, round(cfg.val_fraction * len(titles))))
    self.val_titles = frozenset(sorted(titles, key=rank)[:n_val_articles])
    train_q = [q for q in questions if q.title not in self.val_titles]
    val_q = [q for q in questions if q.title in self.val_titles]
    if cfg.n_val > len(val_q):
      raise ValueError(f'data.n_val={cfg.n_val} exceeds the {len(val_q)} held-out questions')
    if cfg.n_val:
      val_q = val_q[:cfg.n_val]
    self.train_set = [self._encode(q) for q in train_q]
    self._val = [self._encode(q) for q in val_q]
    self.n_unanswerable = sum(not q.answers for q in questions)
    longest_c = max(len(s.context) for s in self.train_set + self._val)
    longest_qa = max(len(s.query) + len(s.target) for s in self.train_set + self._val)
    self.context_len = self._static_len('context_len', longest_c,
                                        lambda s: len(s.context))
    self.qa_len = self._static_len('qa_len', longest_qa, lambda s: len(s.query) + len(s.target))
    self.max_new_tokens = max(len(s.target) for s in self.train_set + self._val)

  def _static_len(self, field: str, longest: int, length) -> int:
    want = getattr(self.cfg, field)
    if not want:
      return _round_up(longest)
    if want < longest:
      s = max(self.train_set + self._val, key=length)
      raise ValueError(f'data.{field}={want} is shorter than question {s.qid} ({length(s)} tokens); '
                       f'nothing is truncated: set data.{field} >= {longest} or 0 (automatic)')
    return want

  def _encode(self, q: SquadQuestion) -> SquadSample:
    tok, cfg = self.tokenizer, self.cfg
    if cfg.context == 'sentence':
      if not q.answers:
        raise ValueError(f'question {q.qid} is unanswerable (SQuAD 2.0): data.context="sentence" '
                         'has no answer sentence to cut to; use data.context="paragraph"')
      context = answer_sentences(q.paragraph, q.answer_start, len(q.answers[0]))
    else:
      context = q.paragraph
    query = tok.encode(cfg.question_prefix + q.question + cfg.answer_prefix)
    answer = (' ' + q.answers[0]) if q.answers else ''
    target = np.concatenate([tok.encode(answer), [tok.eos_id]]).astype(np.int32)
    return SquadSample(tok.encode(context), query, target, q.qid, q.answers)

  # The Task interface ----------------------------------------------------------------------------

  def identity(self) -> dict:
    return {'task': 'squad', 'variant': self.cfg.context}

  def score_prediction(self, sample: SquadSample, prediction: str) -> dict:
    """Official SQuAD exact match and F1 (normalised text, max over the gold answers)."""
    truths = list(sample.answers) or [self.tokenizer.decode(sample.target).strip()]
    return {'gen_em': exact_match(prediction, truths), 'gen_f1': f1_score(prediction, truths)}

  @property
  def summary(self) -> str:
    return (f'short SQuAD ({self.cfg.context}): {len(self.train_set)} train / {len(self._val)} '
            f'validation questions, {len(self.val_titles)} held-out articles, context_len '
            f'{self.context_len}, qa_len {self.qa_len}, tokenizer {self.tokenizer.name}')

  def validation_set(self) -> list[SquadSample]:
    return self._val

  def _bucket(self, length: int, cap: int) -> int:
    if not self.cfg.bucket:
      return cap
    b = 64
    while b < length:
      b *= 2
    return min(b, cap)

  def collate(self, samples: Sequence[SquadSample], batch_size: Optional[int] = None) -> dict:
    c = self._bucket(max(len(s.context) for s in samples), self.context_len)
    q = self.qa_len  # one query length: a bucket per (context, query) pair would multiply compiles
    return collate(samples, self.pad_id, batch_size=batch_size, context_len=c, qa_len=q)
