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
from typing import ClassVar, Optional, Sequence

import numpy as np

from gradmem_jax.data.base import TASKS, HostBatches, collate, exact_text_match

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
  n_pairs: int = 2             # N key-value pairs per context
  key_len: int = 2             # symbols per key
  value_len: int = 2           # symbols per value
  alphabet_size: int = 62      # 62 (a-z A-Z 0-9) | 512
  n_segments: int = 1          # pairs split into this many groups ...
  filler_len: int = 0          # ... with this many random symbols between groups ("noise")
  seed: int = 0                # training stream
  val_seed: int = 1_000_003    # validation set (disjoint from training by construction)
  n_val: int = 1000            # validation samples
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


@TASKS.register('kv')
class KVTask(HostBatches):
  """Generator, tokenizer and batching for KV retrieval."""
  config_cls: ClassVar[type] = KVTaskConfig

  def __init__(self, cfg: KVTaskConfig):
    super().__init__(cfg, CharTokenizer(cfg.alphabet_size))
    t = self.tokenizer
    self.bang, self.qmark, self.colon, self.bar = (t.token_id(c) for c in PUNCT)
    self.ignore_ids = (self.bang, self.bar)  # EM/accuracy score the value characters only
    self.stop_ids = (self.bar,)
    self._val: Optional[list[KVSample]] = None
    self._val_hashes: Optional[set] = None
    self._perm_cache: dict[int, np.ndarray] = {}
    self.context_len = cfg.context_len
    self.max_new_tokens = cfg.value_len + 2
    self.summary = (f'KV retrieval: {cfg.n_pairs} pairs, alphabet {cfg.alphabet_size}, context '
                    f'{cfg.context_len} tokens')

  def identity(self) -> dict:
    c = self.cfg
    out = {'task': 'kv', 'n_pairs': c.n_pairs}
    if (c.key_len, c.value_len, c.alphabet_size, c.n_segments, c.filler_len) != (2, 2, 62, 1, 0):
      out.update(key_len=c.key_len, value_len=c.value_len, alphabet_size=c.alphabet_size,
                 n_segments=c.n_segments, filler_len=c.filler_len)
    return out

  def score_prediction(self, sample: KVSample, prediction: str) -> dict:
    """The generated answer must equal the target up to its stop id (`v!`, without `|`)."""
    stop = [i for i, t in enumerate(sample.target.tolist()) if t in self.stop_ids]
    reference = self.tokenizer.decode(sample.target[:stop[0] if stop else len(sample.target)])
    return exact_text_match(prediction, reference)

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
