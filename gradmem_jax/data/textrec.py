"""Text-reconstruction spans (SPEC §3.5, paper App. I): natural text of L tokens to write into
memory and reconstruct, cut deterministically from the SQuAD paragraphs and bAbI stories on disk.

Documents (`TextDocument`): every distinct SQuAD paragraph (group: its article) and every bAbI story
(its statements rendered with `babi.render_story`; group: the story). A document whose text equals
an earlier one's is not used again (counted in `stats['duplicate_documents']`).

Spans, per document, in order: a span starts at a sentence start; its length L is drawn uniformly
from [min_len, max_len] by a generator seeded with (length_seed, the document key); its ids are the
first L tokens of the encoding of the text from that start. It is kept only if it round-trips:
`tokenizer.decode(ids)` is exactly the document's text at that offset and
`tokenizer.encode(text)` gives the same ids back (a byte span that cuts a UTF-8 character, or a BPE
merge that changes at the cut, fails and is counted in `stats['rejected_starts']`; the next sentence
start is tried with the same L). The next span starts at the first sentence start after the end of
the previous one, so spans never overlap. The rest of a document shorter than L tokens gives no span
(`stats['short_tails']`); a span is never shorter than its L.

Split: by group (SQuAD article, bAbI story), never by span: the `val_fraction` of groups with the
smallest blake2b(f'{split_seed}:{group}') form validation, so no document has spans in both splits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from gradmem_jax.data import babi
from gradmem_jax.data.squad import load_squad, sentence_spans


@dataclasses.dataclass(frozen=True)
class TextDocument:
  key: str                       # unique: 'squad:<file>:<title>:<paragraph #>' / 'babi:<file:line>'
  group: str                     # the split unit: 'squad:<file>:<title>' / the bAbI story (= key)
  text: str
  starts: tuple[int, ...]        # character offsets of the sentence starts (where spans may start)


@dataclasses.dataclass(frozen=True, eq=False)
class TextSpan:
  ids: np.ndarray                # [L] int32
  text: str                      # == tokenizer.decode(ids) == document.text[start:][:len(text)]
  document: str                  # TextDocument.key
  group: str
  start: int                     # character offset in the document


@dataclasses.dataclass(frozen=True)
class TextRecConfig:
  min_len: int = 8               # span length L in tokens: uniform in [min_len, max_len]
  max_len: int = 64
  val_fraction: float = 0.1      # share of groups (articles / stories) held out for validation
  split_seed: int = 0            # which groups are held out
  length_seed: int = 0           # the span lengths
  max_spans_per_document: int = 0  # 0: every non-overlapping span a document holds

  def validate(self) -> None:
    if not 1 <= self.min_len <= self.max_len:
      raise ValueError(f'data.min_len={self.min_len} and data.max_len={self.max_len}: need '
                       '1 <= min_len <= max_len (the paper uses 8 .. 64)')
    if not 0 < self.val_fraction < 1:
      raise ValueError(f'data.val_fraction must be in (0, 1), got {self.val_fraction}')
    if self.max_spans_per_document < 0:
      raise ValueError('data.max_spans_per_document must be >= 0 (0: no limit), got '
                       f'{self.max_spans_per_document}')


@dataclasses.dataclass(frozen=True)
class TextRecSpans:
  train: tuple[TextSpan, ...]
  valid: tuple[TextSpan, ...]
  val_groups: frozenset
  stats: dict

  @property
  def summary(self) -> str:
    s = self.stats
    return (f'text reconstruction: {len(self.train)} train / {len(self.valid)} validation spans of '
            f'{s["min_len"]}-{s["max_len"]} tokens from {s["documents"]} documents '
            f'({s["groups"]} groups, {len(self.val_groups)} held out); '
            f'{s["duplicate_documents"]} duplicate documents, {s["documents_without_span"]} '
            f'without a span, {s["rejected_starts"]} starts failed the round trip')


def _digest(text: str) -> bytes:
  return hashlib.blake2b(text.encode('utf-8'), digest_size=8).digest()


# ------------------------------------------------------------------------------------------------
# Documents.


def squad_documents(path: str) -> list[TextDocument]:
  """Every distinct paragraph of a SQuAD JSON file, in file order; grouped by article."""
  base = os.path.basename(path)
  docs, seen, per_title = [], set(), {}
  for q in load_squad(path):
    if (q.title, q.paragraph) in seen:
      continue
    seen.add((q.title, q.paragraph))
    n = per_title[q.title] = per_title.get(q.title, -1) + 1
    starts = tuple(s for s, _ in sentence_spans(q.paragraph))
    docs.append(TextDocument(f'squad:{base}:{q.title}:{n}', f'squad:{base}:{q.title}',
                             q.paragraph, starts))
  return docs


def babi_documents(babi_dir: str, tasks: Sequence[int] = babi.PAPER_TASKS, split: str = 'train',
                   variant: str = 'en-10k', sep: str = ' ') -> list[TextDocument]:
  """Every story (all its statements) of the given bAbI tasks and split (`babi.load_babi` rules,
  the en-10k -> en fallback included); each story is its own group."""
  docs = []
  for task in tasks:
    for story in babi.babi_stories(babi_dir, task, split, variant):
      text, starts, pos = babi.render_story(story.sentences, sep), [], 0
      for sentence in story.sentences:
        starts.append(pos)
        pos += len(sentence) + len(sep)
      docs.append(TextDocument(f'babi:{story.source}', f'babi:{story.source}', text,
                               tuple(starts)))
  return docs


# ------------------------------------------------------------------------------------------------
# Spans.


def _first_tokens(tokenizer, text: str, n: int) -> np.ndarray:
  """The first n tokens of encode(text), encoding a growing prefix of the text (not all of it)."""
  width = 8 * n + 16
  while True:
    ids = np.asarray(tokenizer.encode(text[:width]), np.int32)
    if width >= len(text) or len(ids) > n + 1:
      return ids[:n]
    width *= 2


def document_spans(doc: TextDocument, tokenizer, cfg: TextRecConfig, stats: dict
                   ) -> list[TextSpan]:
  """The spans of one document (see the module docstring); updates the counters in `stats`."""
  rng = np.random.default_rng([cfg.length_seed, int.from_bytes(_digest(doc.key), 'little')])
  spans: list[TextSpan] = []
  length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
  k = 0
  while k < len(doc.starts):
    if cfg.max_spans_per_document and len(spans) >= cfg.max_spans_per_document:
      break
    start = doc.starts[k]
    ids = _first_tokens(tokenizer, doc.text[start:], length)
    if len(ids) < length:
      stats['short_tails'] += 1
      break
    text = tokenizer.decode(ids)
    if (not text or not doc.text.startswith(text, start)
        or not np.array_equal(np.asarray(tokenizer.encode(text), np.int32), ids)):
      stats['rejected_starts'] += 1
      k += 1
      continue
    spans.append(TextSpan(ids, text, doc.key, doc.group, start))
    end = start + len(text)
    while k < len(doc.starts) and doc.starts[k] < end:
      k += 1
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
  if not spans:
    stats['documents_without_span'] += 1
  return spans


def split_groups(groups: Iterable[str], val_fraction: float, split_seed: int) -> frozenset:
  """The held-out groups: the `val_fraction` (at least one, never all) with the smallest hash."""
  groups = sorted(set(groups))
  if len(groups) < 2:
    raise ValueError(f'{len(groups)} document group(s): a split by document needs at least 2')
  rank = lambda g: hashlib.blake2b(f'{split_seed}:{g}'.encode(), digest_size=8).digest()
  n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
  return frozenset(sorted(groups, key=rank)[:n_val])


def extract_spans(documents: Sequence[TextDocument], tokenizer, cfg: TextRecConfig = TextRecConfig()
                  ) -> TextRecSpans:
  """Train / validation spans of the documents, split by group (deterministic)."""
  cfg.validate()
  if not documents:
    raise ValueError('no documents to cut text-reconstruction spans from')
  stats = dict(documents=0, groups=0, duplicate_documents=0, documents_without_span=0,
               short_tails=0, rejected_starts=0, min_len=cfg.min_len, max_len=cfg.max_len)
  seen_text, seen_key, unique = set(), set(), []
  for d in documents:
    if d.key in seen_key:
      raise ValueError(f'document key {d.key!r} appears twice')
    seen_key.add(d.key)
    h = _digest(d.text)
    if h in seen_text:
      stats['duplicate_documents'] += 1
      continue
    seen_text.add(h)
    unique.append(d)
  stats['documents'] = len(unique)
  stats['groups'] = len({d.group for d in unique})
  val_groups = split_groups((d.group for d in unique), cfg.val_fraction, cfg.split_seed)
  train, valid = [], []
  for d in unique:
    (valid if d.group in val_groups else train).extend(document_spans(d, tokenizer, cfg, stats))
  if not train or not valid:
    raise ValueError(f'no {"training" if not train else "validation"} spans of '
                     f'{cfg.min_len}-{cfg.max_len} tokens: the documents are too short for this '
                     f'tokenizer ({stats})')
  return TextRecSpans(tuple(train), tuple(valid), val_groups, stats)


def text_reconstruction_spans(tokenizer, cfg: TextRecConfig = TextRecConfig(),
                              squad_paths: Sequence[str] = (), babi_dir: Optional[str] = None,
                              babi_tasks: Sequence[int] = babi.PAPER_TASKS,
                              babi_split: str = 'train') -> TextRecSpans:
  """Spans from SQuAD JSON files and / or the bAbI stories of `babi_dir` (at least one source)."""
  docs: list[TextDocument] = []
  for path in squad_paths:
    docs.extend(squad_documents(path))
  if babi_dir is not None:
    docs.extend(babi_documents(babi_dir, babi_tasks, babi_split))
  if not docs:
    raise ValueError('text reconstruction needs squad_paths and / or babi_dir')
  return extract_spans(docs, tokenizer, cfg)


__all__ = ['TextDocument', 'TextSpan', 'TextRecConfig', 'TextRecSpans', 'squad_documents',
           'babi_documents', 'document_spans', 'split_groups', 'extract_spans',
           'text_reconstruction_spans']
