"""TensorFlow Datasets builders for the natural-language data: bAbI QA1-QA20 and Short SQuAD.

Nothing is downloaded: both read the files on local disk through TFDS's manual directory, with the
same readers as the rest of the package (`babi.load_babi`, `squad.load_squad`), so a materialised
dataset holds exactly the examples those readers give, in the same order (`disable_shuffling`).

Needs `tensorflow-datasets` (`pip install -e '.[tfds]'`; the extra also lists importlib_resources,
which tensorflow-datasets 4.9.10 imports but does not declare), not TensorFlow: building in the
default `array_record` format and random access with `tfds.data_source` work without it.
`tfds.load` (tf.data) cannot read array_record; for it build with `file_format='tfrecord'`, which
needs TensorFlow too (`pip install tensorflow-cpu`, a 274 MB wheel, 1.3 GB installed).

Materialise once (or `tfds build gradmem_jax/data/tfds_builders.py --manual_dir=...`):

    from gradmem_jax.data import tfds_builders
    tfds_builders.build_babi('~/tensorflow_datasets', '../shared/data/babi', tasks=(1, 2, 3, 4, 5))
    tfds_builders.build_short_squad('~/tensorflow_datasets', '../shared/data/squad')

then read:

    import tensorflow_datasets as tfds
    from gradmem_jax.data import tfds_builders  # registers babi_qa and short_squad
    ds = tfds.data_source('babi_qa/qa1', data_dir='~/tensorflow_datasets')
    ex = tfds_builders.babi_example(ds['train'][0])        # a babi.BabiExample again

- `babi_qa/qa1` .. `babi_qa/qa20`: splits train / validation / test = `load_babi`'s train / valid /
  test (the 9k / 1k / 1k split; a file missing from en-10k is read from en, and the builder records
  that in `info.metadata['fallback']`). Features: task, story (sentences), question, answer (the
  file's string), supporting (indices into story), source (file:line).
- `short_squad/v1.1` (`dev-v1.1.json.gz`) and `short_squad/v2.0` (`dev-v2.0.json.gz`): splits
  train / validation by article, the rule and defaults of `squad.SquadTask` (val_fraction 0.1,
  split_seed 0).
  Features: id, title, context (the sentence(s) holding the first answer, `squad.answer_sentences`;
  '' for an unanswerable v2.0 question), paragraph, question, answers, answer_start.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

try:
  import tensorflow_datasets as tfds
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError('gradmem_jax.data.tfds_builders needs tensorflow-datasets: '
                    "pip install -e '.[tfds]'") from e

from gradmem_jax.data import babi
from gradmem_jax.data.squad import answer_sentences, load_squad
from gradmem_jax.data.textrec import split_groups

BABI_SPLITS = {'train': 'train', 'validation': 'valid', 'test': 'test'}   # TFDS name -> load_babi
SQUAD_FILES = {'v1.1': 'dev-v1.1.json.gz', 'v2.0': 'dev-v2.0.json.gz'}
SQUAD_VAL_FRACTION, SQUAD_SPLIT_SEED = 0.1, 0      # squad.SquadTaskConfig's defaults

_BABI_CITATION = """@article{weston2015towards,
  title   = {Towards AI-Complete Question Answering: A Set of Prerequisite Toy Tasks},
  author  = {Weston, Jason and Bordes, Antoine and Chopra, Sumit and Rush, Alexander M. and
             van Merri{\\"e}nboer, Bart and Joulin, Armand and Mikolov, Tomas},
  journal = {arXiv preprint arXiv:1502.05698},
  year    = {2015}
}"""
_SQUAD_CITATION = """@inproceedings{rajpurkar2016squad,
  title     = {{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author    = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {EMNLP},
  year      = {2016}
}"""


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------------
# bAbI.



def _dataset_info(builder, description: str, features: dict, **meta) -> tfds.core.DatasetInfo:
  """DatasetInfo in file order (no shuffling: the examples come as the readers give them)."""
  return tfds.core.DatasetInfo(builder=builder, description=description,
                               features=tfds.features.FeaturesDict(features),
                               disable_shuffling=True, metadata=tfds.core.MetadataDict(), **meta)

class BabiConfig(tfds.core.BuilderConfig):
  """One bAbI task (`qa1` .. `qa20`) of the en-10k variant."""

  def __init__(self, *, task: int, **kwargs):
    super().__init__(name=f'qa{task}', description=f'bAbI {babi.TASK_NAMES[task]} (en-10k)',
                     **kwargs)
    self.task = task


class BabiQa(tfds.core.GeneratorBasedBuilder):
  """bAbI tasks_1-20_v1-2 (English, 10k), one example per question (story, question, answer)."""

  name = 'babi_qa'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'en-10k, 9k / 1k / 1k (train / validation / test) per task.'}
  BUILDER_CONFIGS = [BabiConfig(task=t) for t in sorted(babi.TASK_NAMES)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Nothing is downloaded. Give the bAbI directory as the manual directory '
      "(DownloadConfig(manual_dir=...) or `tfds build --manual_dir=...`): " + babi.LAYOUT)

  def _info(self) -> tfds.core.DatasetInfo:
    return _dataset_info(
        self, 'bAbI QA (Weston et al. 2015): context = the story up to the question, query = the '
        'question, target = the answer.',
        {'task': np.int32, 'story': tfds.features.Sequence(tfds.features.Text()),
         'question': tfds.features.Text(), 'answer': tfds.features.Text(),
         'supporting': tfds.features.Sequence(np.int32), 'source': tfds.features.Text()},
        homepage='https://research.facebook.com/downloads/babi/', citation=_BABI_CITATION,
        license='CC BY 3.0')

  def _split_generators(self, dl_manager):
    babi_dir = os.fspath(dl_manager.manual_dir)
    task = self.builder_config.task
    splits = {name: babi.load_babi(babi_dir, task, split) for name, split in BABI_SPLITS.items()}
    self.info.metadata['fallback'] = {name: s.fallback for name, s in splits.items() if s.fallback}
    self.info.metadata['files'] = {name: babi.display_name(s.path) for name, s in splits.items()}
    return {name: self._generate_examples(s) for name, s in splits.items()}

  def _generate_examples(self, split: babi.BabiSplit):
    for i, ex in enumerate(split.examples):
      yield i, {'task': ex.task, 'story': list(ex.story), 'question': ex.question,
                'answer': ex.answer, 'supporting': list(ex.supporting), 'source': ex.source}


def babi_example(record) -> babi.BabiExample:
  """A `babi_qa` record (from `tfds.data_source` or `tfds.as_numpy`) as a BabiExample."""
  return babi.BabiExample(
      task=int(record['task']), story=tuple(_text(s) for s in record['story']),
      question=_text(record['question']), answer=_text(record['answer']),
      supporting=tuple(int(i) for i in record['supporting']), source=_text(record['source']))


# ------------------------------------------------------------------------------------------------
# Short SQuAD.


@dataclasses.dataclass(frozen=True)
class ShortSquadExample:
  qid: str
  title: str
  context: str                 # the answer sentence(s); '' when unanswerable
  paragraph: str
  question: str
  answers: tuple[str, ...]
  answer_start: int            # of answers[0] in paragraph; -1 when unanswerable


def short_squad_examples(path: str) -> list[ShortSquadExample]:
  """Every question of a SQuAD JSON file with its short (answer-sentence) context, in file order."""
  out = []
  for q in load_squad(path):
    context = answer_sentences(q.paragraph, q.answer_start, len(q.answers[0])) if q.answers else ''
    out.append(ShortSquadExample(q.qid, q.title, context, q.paragraph, q.question, q.answers,
                                 q.answer_start))
  return out


def squad_val_titles(titles, val_fraction: float = SQUAD_VAL_FRACTION,
                     split_seed: int = SQUAD_SPLIT_SEED) -> frozenset:
  """The held-out articles: the rule of `squad.SquadTask` (same hash, same count)."""
  return split_groups(titles, val_fraction, split_seed)


class ShortSquadConfig(tfds.core.BuilderConfig):

  def __init__(self, *, filename: str, **kwargs):
    super().__init__(**kwargs)
    self.filename = filename


class ShortSquad(tfds.core.GeneratorBasedBuilder):
  """Short SQuAD (GradMem paper): the SQuAD development set with the answer sentence(s) as context,
  split into train / validation by article."""

  name = 'short_squad'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'From the development set, split by article (val_fraction 0.1, '
                            'split_seed 0).'}
  BUILDER_CONFIGS = [ShortSquadConfig(name=v, filename=f, description=f'SQuAD {v} ({f})')
                     for v, f in SQUAD_FILES.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Nothing is downloaded. Give the directory holding the official SQuAD JSON files as the '
      'manual directory: dev-v1.1.json.gz for v1.1, dev-v2.0.json.gz for v2.0 (this machine has '
      'them in ../shared/data/squad).')

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return _dataset_info(
        self, 'SQuAD with the context cut to the sentence(s) holding the answer span.',
        {'id': text(), 'title': text(), 'context': text(), 'paragraph': text(),
         'question': text(), 'answers': tfds.features.Sequence(text()), 'answer_start': np.int32},
        homepage='https://rajpurkar.github.io/SQuAD-explorer/', citation=_SQUAD_CITATION,
        license='CC BY-SA 4.0')

  def _split_generators(self, dl_manager):
    path = os.path.join(os.fspath(dl_manager.manual_dir), self.builder_config.filename)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'manual_dir={os.fspath(dl_manager.manual_dir)!r}: no '
                              f'{self.builder_config.filename} (official SQuAD JSON layout)')
    examples = short_squad_examples(path)
    val = squad_val_titles({e.title for e in examples})
    self.info.metadata['validation_titles'] = sorted(val)
    return {'train': self._generate_examples([e for e in examples if e.title not in val]),
            'validation': self._generate_examples([e for e in examples if e.title in val])}

  def _generate_examples(self, examples: Sequence[ShortSquadExample]):
    for i, e in enumerate(examples):
      yield i, {'id': e.qid, 'title': e.title, 'context': e.context, 'paragraph': e.paragraph,
                'question': e.question, 'answers': list(e.answers),
                'answer_start': e.answer_start}


def short_squad_example(record) -> ShortSquadExample:
  """A `short_squad` record as a ShortSquadExample."""
  return ShortSquadExample(
      qid=_text(record['id']), title=_text(record['title']), context=_text(record['context']),
      paragraph=_text(record['paragraph']), question=_text(record['question']),
      answers=tuple(_text(a) for a in record['answers']),
      answer_start=int(record['answer_start']))


# ------------------------------------------------------------------------------------------------
# Materialising.


def _build(builder, manual_dir: str):
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual_dir={manual_dir!r}: no such directory')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def build_babi(data_dir: str, babi_dir: str, tasks: Sequence[int] = babi.PAPER_TASKS,
               file_format: str = 'array_record') -> list:
  """Materialises `babi_qa/qa<task>` for each task under data_dir; returns the builders."""
  return [_build(BabiQa(config=f'qa{t}', data_dir=os.path.expanduser(data_dir),
                        file_format=file_format), babi_dir) for t in tasks]


def build_short_squad(data_dir: str, squad_dir: str, versions: Sequence[str] = ('v1.1',),
                      file_format: str = 'array_record') -> list:
  """Materialises `short_squad/<version>` under data_dir; returns the builders."""
  return [_build(ShortSquad(config=v, data_dir=os.path.expanduser(data_dir),
                            file_format=file_format), squad_dir) for v in versions]


__all__ = ['BabiQa', 'BabiConfig', 'ShortSquad', 'ShortSquadConfig', 'ShortSquadExample',
           'babi_example', 'short_squad_example', 'short_squad_examples', 'squad_val_titles',
           'build_babi', 'build_short_squad', 'BABI_SPLITS', 'SQUAD_FILES']
