"""bAbI QA tasks (SPEC §3.2): the original `tasks_1-20_v1-2` English files, read, checked, split.

Pure data: no tokenizer is needed to read, and nothing here touches JAX.

Format (one file per task and part): numbered lines `N sentence.`; a question line is
`N question?<TAB>answer<TAB>supporting ids` (QA1-QA18 put one space before the first tab). When N
goes back to 1 a new story starts. Answers of QA8 and QA19 may be comma-separated lists
(`football,apple`, `s,e`); `BabiExample.answer` keeps the file's string, `BabiExample.answers`
splits it.

One example per question, as in the GradMem paper: context = the story (every statement line of the
story up to the question, in order; earlier question lines are left out), query = the question,
target = the answer. `supporting` holds indices into that story (0-based), so
`ex.story[i] for i in ex.supporting` are the facts the answer depends on; the reader checks that
each one precedes the question, so cutting the story at the question never drops one.

Layout of `data.babi_dir` (the release's, optionally gzipped; ../shared/data/babi on our machines):

    <babi_dir>/en-10k/qa1_single-supporting-fact_train.txt.gz   (10,000 questions)
    <babi_dir>/en-10k/qa1_single-supporting-fact_test.txt.gz    ( 1,000 questions)
    ...                                                          one pair per task, qa1 .. qa20
    <babi_dir>/en/qa1_single-supporting-fact_train.txt.gz       ( 1,000 questions: the 1k variant)

Splits (`load_babi`): the paper's 9k train / 1k valid / 1k test per task from `en-10k`.
- test  = the whole test file (1,000 questions).
- valid = the last 10% of the questions of the training file, with the cut moved back to the first
  line of the story it falls in, so that no story is in both splits; train = everything before the
  cut. For QA1-QA17 and QA19 (stories of a fixed number of questions) this is exactly 9,000 / 1,000;
  QA18 gives 8,998 / 1,002 and QA20 8,990 / 1,010 (measured).
- Where `en-10k` lacks a file (our copy has no QA3 training file) the same file of `en` is read
  instead (the `en` training files are the first 1,000 questions of the `en-10k` ones, the test
  files are identical); the returned `BabiSplit.fallback` says so and a warning is logged. The same
  rule then gives 900 / 100 for QA3 train / valid.

Nothing is truncated or dropped: a file with a different question count than the published one, a
malformed line, a story that does not end with a question (a cut-off file) or a bad gzip stream is
an error naming `data.babi_dir`, the file and the expected layout.

Rendering (`render_story`, `render_example`): the story's sentences joined with one space by default
(`sep=' '`, natural running text, the way GPT-2 would read it); `sep='\\n'` gives one sentence per
line. The question and the answer are the file's strings (the answer's comma list kept as is).

`BabiWordTokenizer`: a lossless word-level tokenizer for from-scratch CPU models, built from the
training vocabulary; same interface as `text.ByteTokenizer`.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

TASK_NAMES = {
    1: 'qa1_single-supporting-fact', 2: 'qa2_two-supporting-facts',
    3: 'qa3_three-supporting-facts', 4: 'qa4_two-arg-relations', 5: 'qa5_three-arg-relations',
    6: 'qa6_yes-no-questions', 7: 'qa7_counting', 8: 'qa8_lists-sets', 9: 'qa9_simple-negation',
    10: 'qa10_indefinite-knowledge', 11: 'qa11_basic-coreference', 12: 'qa12_conjunction',
    13: 'qa13_compound-coreference', 14: 'qa14_time-reasoning', 15: 'qa15_basic-deduction',
    16: 'qa16_basic-induction', 17: 'qa17_positional-reasoning', 18: 'qa18_size-reasoning',
    19: 'qa19_path-finding', 20: 'qa20_agents-motivations',
}
PAPER_TASKS = (1, 2, 3, 4, 5)
SPLITS = ('train', 'valid', 'test')
VARIANTS = ('en-10k', 'en')
# Published question counts per file: {variant: {part: questions}}.
PUBLISHED_COUNTS = {'en-10k': {'train': 10_000, 'test': 1_000},
                    'en': {'train': 1_000, 'test': 1_000}}
VALID_FRACTION = 0.1
LAYOUT = ('the bAbI tasks_1-20_v1-2 English layout: <babi_dir>/en-10k/'
          'qa1_single-supporting-fact_train.txt.gz and ..._test.txt.gz, one pair per task '
          '(qa1 .. qa20, e.g. en-10k/qa2_two-supporting-facts_test.txt.gz), with <babi_dir>/en/ '
          '(the 1k variant, same names) as the fallback; files may also be uncompressed .txt. '
          'This machine has it in ../shared/data/babi')


@dataclasses.dataclass(frozen=True)
class BabiExample:
  task: int                       # 1 .. 20
  story: tuple[str, ...]          # the statements before the question, in order
  question: str                   # 'Where is Mary?'
  answer: str                     # the file's answer ('bathroom'; QA8/QA19 may be 'football,apple')
  supporting: tuple[int, ...]     # indices into `story` of the supporting facts (file order)
  source: str                     # 'en-10k/qa1_single-supporting-fact_train.txt.gz:3'

  @property
  def answers(self) -> tuple[str, ...]:
    """The answer split at commas (one element for every task but QA8 and QA19)."""
    return tuple(self.answer.split(','))


@dataclasses.dataclass(frozen=True)
class BabiStory:
  """One story of a file: every statement, and the examples (questions) asked in it."""
  source: str                     # file:line of the story's first line
  sentences: tuple[str, ...]
  examples: tuple[BabiExample, ...]


class BabiFormatError(ValueError):
  """A file that is not in the bAbI format (or is cut off)."""


def display_name(path: str) -> str:
  """`en-10k/qa1_..._train.txt.gz` for a file in the release layout, else the base name."""
  parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
  base = os.path.basename(path)
  return f'{parent}/{base}' if parent else base


def task_of_file(path: str) -> int:
  m = re.match(r'qa(\d+)_', os.path.basename(path))
  if not m or not 1 <= int(m.group(1)) <= 20:
    raise BabiFormatError(f'{path}: cannot tell the task from the file name (expected '
                          'qaN_<name>_<train|test>.txt[.gz] with N in 1..20)')
  return int(m.group(1))


def _read_text(path: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        raw = f.read()
    else:
      with open(path, 'rb') as f:
        raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off stream EOF
    raise BabiFormatError(f'{path}: not a readable (gzip) file: {type(e).__name__}: {e}') from e
  try:
    return raw.decode('ascii')
  except UnicodeDecodeError as e:
    raise BabiFormatError(f'{path}: not ASCII text (the bAbI English files are ASCII): {e}') from e


_LINE = re.compile(r'(\d+) (.*)')


def read_babi_stories(path: str, task: Optional[int] = None) -> list[BabiStory]:
  """Every story of one bAbI file, validated (see `read_babi_file`)."""
  task = task_of_file(path) if task is None else task
  name = display_name(path)
  text = _read_text(path)
  if not text:
    raise BabiFormatError(f'{path}: the file is empty')
  if not text.endswith('\n'):
    raise BabiFormatError(f'{path}: no newline at the end of the file (cut off?)')
  stories: list[BabiStory] = []
  sentences: list[str] = []
  examples: list[BabiExample] = []
  story_line = 0
  line_to_story: dict[int, int] = {}   # statement number -> index into `sentences`
  expect = 1

  def close_story(lineno: int):
    if not examples:
      raise BabiFormatError(f'{name}:{lineno}: the story that starts at line {story_line} ends '
                            'without a question (a cut-off or malformed file)')
    if expect - 1 in line_to_story:  # the story's last line (number expect - 1) is a statement
      raise BabiFormatError(f'{name}:{lineno}: the story that starts at line {story_line} ends '
                            'with a statement after its last question (a cut-off file: every bAbI '
                            'story ends with a question)')
    stories.append(BabiStory(f'{name}:{story_line}', tuple(sentences), tuple(examples)))

  lines = text[:-1].split('\n')
  for lineno, line in enumerate(lines, start=1):
    where = f'{name}:{lineno}'
    m = _LINE.fullmatch(line)
    if not m:
      raise BabiFormatError(f'{where}: expected "N sentence" or "N question<TAB>answer<TAB>ids", '
                            f'got {line[:80]!r}')
    number, body = int(m.group(1)), m.group(2)
    if number == 1:
      if lineno > 1:
        close_story(lineno - 1)
      sentences, examples, line_to_story, story_line = [], [], {}, lineno
    elif lineno == 1:
      raise BabiFormatError(f'{where}: the first line must be number 1, got {number}')
    elif number != expect:
      raise BabiFormatError(f'{where}: line number {number} after {expect - 1} (numbers count up '
                            'by one within a story and go back to 1 for a new one)')
    expect = number + 1
    if '\t' not in body:
      if not body.strip():
        raise BabiFormatError(f'{where}: empty statement')
      line_to_story[number] = len(sentences)
      sentences.append(body)
      continue
    fields = body.split('\t')
    if len(fields) != 3:
      raise BabiFormatError(f'{where}: a question line has 3 tab-separated fields (question, '
                            f'answer, supporting ids), got {len(fields)}')
    question, answer, ids = fields[0].strip(), fields[1].strip(), fields[2].split()
    if not question or not answer or not ids:
      raise BabiFormatError(f'{where}: empty question, answer or supporting ids in {line!r}')
    if not all(i.isdigit() for i in ids):
      raise BabiFormatError(f'{where}: supporting ids must be line numbers, got {fields[2]!r}')
    supporting = []
    for i in map(int, ids):
      if i not in line_to_story:
        raise BabiFormatError(f'{where}: supporting id {i} is not an earlier statement of this '
                              'story')
      supporting.append(line_to_story[i])
    examples.append(BabiExample(task, tuple(sentences), question, answer, tuple(supporting),
                                where))
  close_story(len(lines))
  return stories


def read_babi_file(path: str, task: Optional[int] = None) -> list[BabiExample]:
  """One example per question of a bAbI file (`.txt` or `.txt.gz`), in file order.

  The task is read from the file name (`qaN_...`) unless given. Raises FileNotFoundError for a
  missing file and BabiFormatError (a ValueError) for anything that is not the bAbI format.
  """
  return [ex for story in read_babi_stories(path, task) for ex in story.examples]


# ------------------------------------------------------------------------------------------------
# The release layout and the splits.


def _layout_error(babi_dir: str, problem: str) -> str:
  return f'data.babi_dir={babi_dir!r}: {problem}. Expected {LAYOUT}'


def _check_task(task: int) -> None:
  if task not in TASK_NAMES:
    raise ValueError(f'bAbI task {task!r} is not known; allowed: 1 .. 20 (the paper uses '
                     f'{list(PAPER_TASKS)})')


def babi_file(babi_dir: str, variant: str, task: int, part: str) -> Optional[str]:
  """The path of one file of the layout (`.txt.gz` preferred, then `.txt`), or None."""
  stem = os.path.join(babi_dir, variant, f'{TASK_NAMES[task]}_{part}.txt')
  for path in (stem + '.gz', stem):
    if os.path.isfile(path):
      return path
  return None


@dataclasses.dataclass(frozen=True)
class BabiSplit:
  """The examples of one task and split, and where they came from."""
  task: int
  split: str                      # train | valid | test
  examples: tuple[BabiExample, ...]
  path: str                       # the file read
  variant: str                    # en-10k | en: the variant actually read
  fallback: str                   # '' or a sentence saying which file replaced a missing one
  n_stories: int

  def __len__(self) -> int:
    return len(self.examples)

  def __iter__(self) -> Iterator[BabiExample]:
    return iter(self.examples)

  def __getitem__(self, i):
    return self.examples[i]

  @property
  def summary(self) -> str:
    note = f' ({self.fallback})' if self.fallback else ''
    return (f'bAbI QA{self.task} {self.split}: {len(self.examples)} questions in {self.n_stories} '
            f'stories from {display_name(self.path)}{note}')


def valid_cut(stories: Sequence[BabiStory], fraction: float = VALID_FRACTION) -> int:
  """Index of the first validation story: the story holding question n - round(fraction * n)."""
  n = sum(len(s.examples) for s in stories)
  first_valid_question = n - int(round(fraction * n))
  seen = 0
  for k, story in enumerate(stories):
    if seen + len(story.examples) > first_valid_question:
      return k
    seen += len(story.examples)
  return len(stories)


def load_babi(babi_dir: str, task: int, split: str, variant: str = 'en-10k') -> BabiSplit:
  """The examples of one task and split (train | valid | test), see the module docstring.

  `variant='en-10k'` is the paper's setting; `variant='en'` reads the 1k variant (then train /
  valid are 900 / 100). A file missing from `en-10k` is read from `en` and reported in
  `BabiSplit.fallback` and the log.
  """
  _check_task(task)
  if split == 'validation':
    split = 'valid'
  if split not in SPLITS:
    raise ValueError(f'bAbI split {split!r} is not known; allowed: {list(SPLITS)}')
  if variant not in VARIANTS:
    raise ValueError(f'bAbI variant {variant!r} is not known; allowed: {list(VARIANTS)}')
  if not babi_dir:
    raise ValueError(_layout_error(babi_dir, 'empty'))
  if not os.path.isdir(babi_dir):
    raise FileNotFoundError(_layout_error(babi_dir, 'no such directory'))
  part = 'test' if split == 'test' else 'train'
  path, used, fallback = babi_file(babi_dir, variant, task, part), variant, ''
  if path is None and variant == 'en-10k':
    path = babi_file(babi_dir, 'en', task, part)
    if path is not None:
      used = 'en'
      fallback = (f'en-10k/{TASK_NAMES[task]}_{part}.txt[.gz] is missing from {babi_dir}; read '
                  f'en/{os.path.basename(path)} instead '
                  f'({PUBLISHED_COUNTS["en"][part]:,} instead of '
                  f'{PUBLISHED_COUNTS["en-10k"][part]:,} questions in the file)')
      logging.warning('bAbI QA%d %s: %s', task, split, fallback)
  if path is None:
    tried = [os.path.join(babi_dir, v, f'{TASK_NAMES[task]}_{part}.txt[.gz]')
             for v in ((variant, 'en') if variant == 'en-10k' else (variant,))]
    raise FileNotFoundError(_layout_error(babi_dir, f'no file for QA{task} {part}; looked for '
                                          f'{" and ".join(tried)}'))
  try:
    stories = read_babi_stories(path, task)
  except BabiFormatError as e:
    raise BabiFormatError(_layout_error(babi_dir, f'{path} is not a bAbI file: {e}')) from e
  n = sum(len(s.examples) for s in stories)
  want = PUBLISHED_COUNTS[used][part]
  if n != want:
    raise BabiFormatError(_layout_error(
        babi_dir, f'{path} holds {n:,} questions, the published {used} {part} file has {want:,} '
        '(a cut-off or different file; nothing is dropped or padded)'))
  if split != 'test':
    cut = valid_cut(stories)
    stories = stories[:cut] if split == 'train' else stories[cut:]
  examples = tuple(ex for s in stories for ex in s.examples)
  return BabiSplit(task, split, examples, path, used, fallback, len(stories))


def babi_stories(babi_dir: str, task: int, split: str, variant: str = 'en-10k'
                 ) -> list[BabiStory]:
  """The whole stories (every statement) of a task's split, e.g. for text reconstruction."""
  data = load_babi(babi_dir, task, split, variant)
  first = {ex.source for ex in data.examples}
  return [s for s in read_babi_stories(data.path, task) if s.examples[0].source in first]


# ------------------------------------------------------------------------------------------------
# Text.


def render_story(story: Sequence[str], sep: str = ' ') -> str:
  """The story as one text: its sentences joined with `sep` (one space by default; '\\n' gives one
  sentence per line)."""
  return sep.join(story)


def render_example(ex: BabiExample, sep: str = ' ') -> tuple[str, str, str]:
  """(context, query, target) texts of an example: the rendered story, the question, the answer."""
  return render_story(ex.story, sep), ex.question, ex.answer


WORD_SPECIALS = ('<pad>', '<bos>', '<eos>', '<unk>')
# A piece is a word or one punctuation mark, with the single space before it if there is one; any
# other white-space character is a piece of its own. Concatenating the pieces gives the text back.
_PIECE = re.compile(r' ?\w+| ?[^\w\s]|\s')


def word_pieces(text: str) -> list[str]:
  return _PIECE.findall(text)


class BabiWordTokenizer:
  """Word-level tokenizer over a fixed vocabulary: ids 0-3 are <pad> <bos> <eos> <unk>, then the
  pieces (`word_pieces`: ' Mary', 'Mary', '.', '?', ',', '\\n', ...) in sorted order.

  Lossless: `decode(encode(t)) == t` for every text whose pieces are all in the vocabulary; a piece
  outside it encodes to <unk> and decodes as the string '<unk>'. `skip_special` drops pad, bos and
  eos only (an <unk> is never silently removed).
  """

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
  offset = len(WORD_SPECIALS)
  name = 'babi-words'

  def __init__(self, pieces: Iterable[str]):
    pieces = sorted(set(pieces) - set(WORD_SPECIALS))
    for p in pieces:
      if word_pieces(p) != [p]:
        raise ValueError(f'{p!r} is not a single word piece')
    self.pieces = tuple(pieces)
    self._ids = {p: i + self.offset for i, p in enumerate(self.pieces)}
    self._strings = WORD_SPECIALS + self.pieces
    self.vocab_size = len(self._strings)

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> 'BabiWordTokenizer':
    """The pieces of the texts, each word and mark both with and without its leading space (so
    'Where' at the start of a question and ' Where' after a prompt are both known)."""
    pieces = set()
    for t in texts:
      for p in word_pieces(t):
        if p.isspace():
          pieces.add(p)
        else:
          pieces.update((p.lstrip(' '), ' ' + p.lstrip(' ')))
    return cls(pieces)

  @classmethod
  def from_examples(cls, examples: Iterable[BabiExample], sep: str = ' ',
                    extra_texts: Sequence[str] = ()) -> 'BabiWordTokenizer':
    """The vocabulary of the rendered stories, questions and answers (build it from the training
    split), plus `extra_texts` (prompt words such as 'Question:' or 'Answer:')."""
    def texts():
      yield from extra_texts
      for ex in examples:
        yield from render_example(ex, sep)
        yield ' ' + ex.answer
    return cls.from_texts(texts())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray([self._ids.get(p, self.unk_id) for p in word_pieces(text)], np.int32)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= self.vocab_size)]
    if bad.size:
      raise ValueError(f'token id {int(bad[0])} is outside the vocabulary (size {self.vocab_size})')
    drop = (self.pad_id, self.bos_id, self.eos_id) if skip_special else ()
    return ''.join(self._strings[i] for i in ids.tolist() if i not in drop)


__all__ = ['TASK_NAMES', 'PAPER_TASKS', 'SPLITS', 'VARIANTS', 'PUBLISHED_COUNTS', 'BabiExample',
           'BabiStory', 'BabiSplit', 'BabiFormatError', 'BabiWordTokenizer', 'read_babi_file',
           'read_babi_stories', 'load_babi', 'babi_file', 'babi_stories', 'valid_cut',
           'render_story', 'render_example', 'word_pieces', 'task_of_file', 'display_name', 'LAYOUT']
