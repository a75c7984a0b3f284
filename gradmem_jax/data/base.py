"""The Task interface (a Protocol), the registry of tasks by name (`data.task`), and the batching
every task shares.

A task registers itself in its own module:

  @TASKS.register('kv')
  class KVTask(HostBatches):
    config_cls = KVTaskConfig       # the `config.data` section, as a frozen dataclass
    ...

and the runner builds it with `build_task(config.data)`. Nothing outside the task's module names
it; results and reports identify a task by `task.identity()`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from gradmem_jax.registry import Registry, from_section

# The arrays of every batch, all int32, right-padded: [batch, length].
BATCH_SPEC = {
    'context': 'context token ids [B, S]',
    'context_mask': '1 for a real context token [B, S]',
    'qa': 'query + target token ids, teacher forced [B, Q]',
    'target_mask': '1 for a target token that carries loss [B, Q]; all 0: a padding sample',
}


@dataclasses.dataclass(frozen=True)
class Sample:
  """One example: what is written, what is asked, what must be answered (int32 ids)."""
  context: np.ndarray   # [S]
  query: np.ndarray     # [q]
  target: np.ndarray    # [t]


@runtime_checkable
class Task(Protocol):
  """What the runner, evaluators and reports need from a task."""
  config_cls: ClassVar[type]      # the dataclass of its `config.data` section
  cfg: Any
  tokenizer: Any                  # encode(text) -> int32 ids, decode(ids) -> text
  vocab_size: int
  pad_id: int
  ignore_ids: tuple               # target ids not scored by EM / token accuracy
  stop_ids: tuple                 # ids that end a generated answer
  context_len: int                # longest context (static shapes; the KV cache size)
  max_new_tokens: int             # longest answer (generation budget)
  summary: str                    # one line for the console

  def identity(self) -> dict:
    """Fields that name the task in results and reports: {'task': name, ...} (e.g. n_pairs)."""

  def validation_set(self) -> Sequence[Any]:
    """The fixed held-out samples (objects with context/query/target ids)."""

  def collate(self, samples: Sequence[Any], batch_size: Optional[int] = None) -> dict:
    """BATCH_SPEC arrays (numpy) for samples, padded with empty samples up to batch_size."""

  def train_batches(self, global_batch: int, start_index: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[tuple[int, dict]]:
    """(next start index, this host's slice of the global batch), from any start index."""

  def eval_batches(self, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """The validation set in global batches (this host's slice of each)."""

  def score_prediction(self, sample: Any, prediction: str) -> dict:
    """Generation metrics of one decoded answer, e.g. {'gen_em': 1.0} (each in [0, 1])."""


TASKS: Registry[type] = Registry('task', 'data.task')


def task_config(data_cfg):
  """The validated task config dataclass of a `config.data` section (reads no files)."""
  data = dict(data_cfg)
  name = data.pop('task', 'kv')
  cls = TASKS.get(name)
  return from_section(cls.config_cls, data, 'data', f'a {name} task')


def build_task(data_cfg) -> Task:
  cfg = task_config(data_cfg)
  task = TASKS.get(dict(data_cfg).get('task', 'kv'))(cfg)
  return task


def exact_text_match(prediction: str, reference: str) -> dict:
  """{'gen_em': 1.0 when the decoded answer equals the reference exactly, else 0.0}."""
  return {'gen_em': float(prediction == reference)}


class HostBatches:
  """Host-sharded batching shared by the tasks: subclasses provide `train_sample(i)`,
  `validation_set()` and `collate(samples, batch_size=None)`."""

  def __init__(self, cfg: Any, tokenizer: Any):
    cfg.validate()
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.vocab_size
    self.pad_id = tokenizer.pad_id

  def train_batches(self, global_batch: int, start_index: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[tuple[int, dict]]:
    """Yields (next_start_index, local batch): this host's slice of each global batch."""
    local = _local_batch(global_batch, process_count)
    index = start_index
    while True:
      lo = index + process_index * local
      batch = self.collate([self.train_sample(i) for i in range(lo, lo + local)])
      index += global_batch
      yield index, batch

  def eval_batches(self, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict]:
    """The validation set in global batches (the last one padded); this host's slice of each."""
    local = _local_batch(global_batch, process_count)
    val = self.validation_set()
    out = []
    for start in range(0, len(val), global_batch):
      chunk = val[start:start + global_batch]
      mine = chunk[process_index * local:(process_index + 1) * local]
      batch = self.collate(mine or chunk[:1], batch_size=local)
      if not mine:  # this host has no real sample in the last, short batch: nothing is scored
        batch['target_mask'][:] = 0
      out.append(batch)
    return out




def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'the global batch {global_batch} must be divisible by the number of '
                     f'processes {process_count}')
  return global_batch // process_count


def collate(samples: Sequence[Any], pad_id: int, *, batch_size: Optional[int] = None,
            context_len: Optional[int] = None, qa_len: Optional[int] = None) -> dict:
  """Right-pads samples (anything with int32 `context`, `query`, `target`) into a batch of
  BATCH_SPEC arrays; pads with empty samples (target_mask 0) up to batch_size. Never truncates: a
  sample longer than the requested length is an error."""
  n = len(samples)
  b = batch_size or n
  if n > b:
    raise ValueError(f'{n} samples do not fit a batch of {b}')
  if n == 0:
    raise ValueError('cannot collate an empty list of samples')
  s_len = max(len(s.context) for s in samples)
  q_len = max(len(s.query) + len(s.target) for s in samples)
  if context_len is not None:
    if s_len > context_len:
      raise ValueError(f'context of {s_len} tokens exceeds the bucket length {context_len}')
    s_len = context_len
  if qa_len is not None:
    if q_len > qa_len:
      raise ValueError(f'query+target of {q_len} tokens exceeds the bucket length {qa_len}')
    q_len = qa_len
  batch = {'context': np.full((b, s_len), pad_id, np.int32),
           'context_mask': np.zeros((b, s_len), np.int32),
           'qa': np.full((b, q_len), pad_id, np.int32),
           'target_mask': np.zeros((b, q_len), np.int32)}
  for i in range(b):
    s = samples[i] if i < n else samples[0]  # padding samples: a real context, no targets
    if len(s.context) == 0:
      raise ValueError(f'sample {i} has an empty context')
    batch['context'][i, :len(s.context)] = s.context
    batch['context_mask'][i, :len(s.context)] = 1
    qa = np.concatenate([s.query, s.target])
    batch['qa'][i, :len(qa)] = qa
    if i < n:
      batch['target_mask'][i, len(s.query):len(qa)] = 1
  return batch


def grouped_permutation(rng: np.random.Generator, lengths: np.ndarray, window: int,
                        block: int) -> np.ndarray:
  """A permutation of range(len(lengths)) whose windows of `window` are sorted by length and cut
  into blocks of `block`, the blocks shuffled: consecutive samples have similar lengths (batches
  pad less). window or block 0: a plain permutation."""
  perm = rng.permutation(len(lengths))
  if not window or not block:
    return perm
  parts = []
  for lo in range(0, len(perm), window):
    win = perm[lo:lo + window]
    win = win[np.argsort(lengths[win], kind='stable')]
    blocks = [win[i:i + block] for i in range(0, len(win), block)]
    parts.extend(blocks[i] for i in rng.permutation(len(blocks)))
  return np.concatenate(parts)


def text_task(task, tokenizer) -> None:
  """A natural-language task's ids from its tokenizer: every target token and EOS is scored, and
  EOS ends a generated answer."""
  task.tokenizer = tokenizer
  task.vocab_size, task.pad_id, task.eos_id = tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id
  task.ignore_ids, task.stop_ids = (), (tokenizer.eos_id,)


def task_tokenizer(spec: str, words):
  """`data.tokenizer` of a natural-language task: 'words' (built by `words()` from the training
  text), or anything `text.make_tokenizer` takes; 'model' is resolved by the runner first."""
  from gradmem_jax.data.text import make_tokenizer
  if spec == 'words':
    return words()
  if spec == 'model':
    raise ValueError("data.tokenizer='model' needs model.pretrained (the runner replaces it with "
                     "the model's tokenizer; build the task from the whole config)")
  return make_tokenizer(spec)


class FixedSetStream(HostBatches):
  """A task with a fixed training set (`self.train_set`) read in epochs: every epoch is a fresh
  permutation, grouped by context length when `cfg.length_window` and `cfg.length_block` are set
  (`grouped_permutation`). `stream_salt` gives each task its own random stream."""
  stream_salt: ClassVar[int] = 0

  def epoch_order(self, epoch: int) -> np.ndarray:
    cache = self.__dict__.setdefault('_order_cache', {})
    if epoch not in cache:
      cache.clear()  # one epoch at a time
      lengths = np.array([len(s.context) for s in self.train_set])
      rng = np.random.default_rng([self.cfg.seed, self.stream_salt, epoch])
      cache[epoch] = grouped_permutation(rng, lengths, self.cfg.length_window,
                                         self.cfg.length_block)
    return cache[epoch]

  def train_sample(self, index: int) -> Any:
    """Sample `index` of the training stream."""
    epoch, pos = divmod(index, len(self.train_set))
    return self.train_set[int(self.epoch_order(epoch)[pos])]
