"""Associative key-value retrieval (SPEC §3.1): character tokenizer and a deterministic generator.

Context  `!k1:v1!!k2:v2!...!kN:vN!|`   (7N + 1 characters for 2-symbol keys and values)
Query    `?!kj:`                         target `vj!|`

Every sample is a pure function of (seed, index): any host can build any slice of any batch, and
the iterator state is one integer. The validation set uses its own seed; a training candidate whose
context equals a validation context is rejected and redrawn (deterministically), so the two are
disjoint by construction (`tests/test_data.py` checks a whole epoch).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Optional, Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<unk>')
PUNCT = ('!', '?', ':', '|')
BASE_ALPHABET = ('abcdefghijklmnopqrstuvwxyz' 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' '0123456789')
ALPHABET_SIZES = (62, 512)


def alphabet(size: int) -> str:
  """The symbol alphabet: a-z A-Z 0-9, extended for 512 with Latin/IPA letters from U+0100."""
  if size not in ALPHABET_SIZES:
    raise ValueError(f'data.alphabet_size={size} is not supported; allowed: {list(ALPHABET_SIZES)}')
  if size == 62:
    return BASE_ALPHABET
  return BASE_ALPHABET + ''.join(chr(0x100 + i) for i in range(size - 62))


class CharTokenizer:
  """One token per character. ids: 0 pad, 1 bos, 2 eos, 3 unk, symbols, then `! ? : |`."""

  def __init__(self, alphabet_size: int = 62):
    self.symbols = alphabet(alphabet_size)
    chars = list(self.symbols) + list(PUNCT)
    self.char_to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
    self.id_to_char = {i: c for c, i in self.char_to_id.items()}
    self.vocab_size = len(SPECIAL_TOKENS) + len(chars)
    self.pad_id = PAD

  def token_id(self, char: str) -> int:
    return self.char_to_id[char]

  def encode(self, text: str) -> np.ndarray:
    ids = np.empty(len(text), np.int32)
    for i, c in enumerate(text):
      if c not in self.char_to_id:
        raise ValueError(f'character {c!r} at position {i} of {text[:40]!r} is not in the '
                         f'{len(self.symbols)}-symbol KV vocabulary (a-z A-Z 0-9 ! ? : | ...)')
      ids[i] = self.char_to_id[c]
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i in self.id_to_char:
        out.append(self.id_to_char[i])
      elif not skip_special:
        if not 0 <= i < len(SPECIAL_TOKENS):
          raise ValueError(f'token id {i} is outside the vocabulary (size {self.vocab_size})')
        out.append(SPECIAL_TOKENS[i])
      elif not 0 <= i < len(SPECIAL_TOKENS):
        raise ValueError(f'token id {i} is outside the vocabulary (size {self.vocab_size})')
    return ''.join(out)


@dataclasses.dataclass(frozen=True)
class KVSample:
  context: np.ndarray   # [S] int32
  query: np.ndarray     # [q] int32  `?!k:`
  target: np.ndarray    # [t] int32  `v!|`


@dataclasses.dataclass(frozen=True)
class KVTaskConfig:
  n_pairs: int = 2
  key_len: int = 2
  value_len: int = 2
  alphabet_size: int = 62
  n_segments: int = 1          # pairs split into this many groups ...
  filler_len: int = 0          # ... with this many random symbols between groups ("noise")
  seed: int = 0                # training stream
  val_seed: int = 1_000_003    # validation set (disjoint from training by construction)
  n_val: int = 1000
  train_size: int = 1_000_000  # samples per epoch (the stream repeats, reshuffled, after this)

  def validate(self) -> None:
    alphabet(self.alphabet_size)
    for f in ('n_pairs', 'key_len', 'value_len', 'n_segments', 'n_val', 'train_size'):
      if getattr(self, f) < 1:
        raise ValueError(f'data.{f} must be >= 1, got {getattr(self, f)}')
    if self.filler_len < 0:
      raise ValueError(f'data.filler_len must be >= 0, got {self.filler_len}')
    if self.n_segments > self.n_pairs:
      raise ValueError(f'data.n_segments={self.n_segments} must be <= data.n_pairs={self.n_pairs}')
    if self.n_pairs > self.alphabet_size ** self.key_len:
      raise ValueError(f'data.n_pairs={self.n_pairs} exceeds the number of distinct keys '
                       f'({self.alphabet_size}^{self.key_len})')
    if self.seed == self.val_seed:
      raise ValueError('data.seed and data.val_seed must differ')

  @property
  def context_len(self) -> int:
    pair = self.key_len + self.value_len + 3
    return self.n_pairs * pair + (self.n_segments - 1) * self.filler_len + 1

  @property
  def qa_len(self) -> int:
    return (self.key_len + 3) + (self.value_len + 2)


class HostBatches:
  """Batching shared by the tasks: subclasses provide `train_sample(i)`, `validation_set()` and
  `collate(samples, batch_size=None)`."""

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


class KVTask(HostBatches):
  """Generator, tokenizer and batching for KV retrieval."""

  def __init__(self, cfg: KVTaskConfig):
    cfg.validate()
    self.cfg = cfg
    self.tokenizer = CharTokenizer(cfg.alphabet_size)
    t = self.tokenizer
    self.bang, self.qmark, self.colon, self.bar = (t.token_id(c) for c in PUNCT)
    self.vocab_size = t.vocab_size
    self.pad_id = PAD
    self.ignore_ids = (self.bang, self.bar)  # EM/accuracy score the value characters only
    self.stop_ids = (self.bar,)
    self._val: Optional[list[KVSample]] = None
    self._val_hashes: Optional[set] = None
    self._perm_cache: dict[int, np.ndarray] = {}
    self.context_len = cfg.context_len
    self.max_new_tokens = cfg.value_len + 2
    self.summary = (f'KV retrieval: {cfg.n_pairs} pairs, alphabet {cfg.alphabet_size}, context '
                    f'{cfg.context_len} tokens')

  # -- single samples ---------------------------------------------------------------------------

  def _draw(self, rng: np.random.Generator) -> KVSample:
    c = self.cfg
    a = c.alphabet_size
    keys_flat = rng.choice(a ** c.key_len, size=c.n_pairs, replace=False)
    vals_flat = rng.integers(0, a ** c.value_len, size=c.n_pairs)
    digits = lambda x, n: (x[:, None] // (a ** np.arange(n - 1, -1, -1))[None]) % a + 4
    keys, vals = digits(keys_flat, c.key_len), digits(vals_flat, c.value_len)
    bounds = np.linspace(0, c.n_pairs, c.n_segments + 1).round().astype(int)
    parts = []
    for s in range(c.n_segments):
      if s > 0 and c.filler_len:
        parts.append(rng.integers(0, a, size=c.filler_len) + 4)
      for j in range(bounds[s], bounds[s + 1]):
        parts.append(np.concatenate([[self.bang], keys[j], [self.colon], vals[j], [self.bang]]))
    parts.append([self.bar])
    context = np.concatenate(parts).astype(np.int32)
    j = int(rng.integers(c.n_pairs))
    query = np.concatenate([[self.qmark, self.bang], keys[j], [self.colon]]).astype(np.int32)
    target = np.concatenate([vals[j], [self.bang, self.bar]]).astype(np.int32)
    return KVSample(context, query, target)

  @staticmethod
  def _hash(context: np.ndarray) -> bytes:
    return hashlib.blake2b(context.tobytes(), digest_size=16).digest()

  def validation_set(self) -> list[KVSample]:
    if self._val is None:
      self._val = [self._draw(np.random.default_rng([self.cfg.val_seed, i]))
                   for i in range(self.cfg.n_val)]
      self._val_hashes = {self._hash(s.context) for s in self._val}
    return self._val

  def _epoch_perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perm_cache:
      self._perm_cache.clear()  # one epoch at a time
      self._perm_cache[epoch] = np.random.default_rng([self.cfg.seed, 7, epoch]).permutation(
          self.cfg.train_size)
    return self._perm_cache[epoch]

  def train_sample(self, index: int) -> KVSample:
    """Sample `index` of the training stream (epoch = index // train_size, reshuffled)."""
    self.validation_set()
    epoch, pos = divmod(index, self.cfg.train_size)
    j = int(self._epoch_perm(epoch)[pos]) if epoch else pos
    rng = np.random.default_rng([self.cfg.seed, j])
    while True:  # redraw the rare candidate that collides with a validation context
      s = self._draw(rng)
      if self._hash(s.context) not in self._val_hashes:
        return s

  # -- batches ----------------------------------------------------------------------------------

  def collate(self, samples: Sequence[KVSample], batch_size: Optional[int] = None) -> dict:
    """Right-pads samples into a batch; pads with empty samples (target_mask 0) up to batch_size."""
    return collate(samples, self.pad_id, batch_size=batch_size,
                   context_len=self.cfg.context_len, qa_len=self.cfg.qa_len)

  def render(self, sample_or_ids) -> str:
    t = self.tokenizer
    if isinstance(sample_or_ids, KVSample):
      s = sample_or_ids
      return f'{t.decode(s.context)}  {t.decode(s.query)} -> {t.decode(s.target)}'
    return t.decode(sample_or_ids)


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'the global batch {global_batch} must be divisible by the number of '
                     f'processes {process_count}')
  return global_batch // process_count


def collate(samples: Sequence[KVSample], pad_id: int, *, batch_size: Optional[int] = None,
            context_len: Optional[int] = None, qa_len: Optional[int] = None) -> dict:
  """Right-pads (context, query, target) samples to fixed lengths. Never truncates: a sample
  longer than the requested length is an error."""
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


def bucket_length(length: int, buckets: Sequence[int], field: str = 'length') -> int:
  """The smallest bucket >= length (error when none fits: nothing is truncated)."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f'{field} {length} exceeds the largest bucket {max(buckets)}')
