"""Tokenizers for natural-language tasks.

- `ByteTokenizer`: UTF-8 bytes shifted past four special ids. It needs no files, so models trained
  from scratch (and the tests) run anywhere.
- `HFTokenizer`: a Hugging Face tokenizer read from a local directory (for example the `gpt2`
  snapshot next to its weights). Nothing is downloaded: `local_files_only=True`.

Both expose `vocab_size`, `pad_id`, `eos_id`, `encode(text) -> int32 array` and
`decode(ids) -> str`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

BYTE_SPECIALS = ('<pad>', '<bos>', '<eos>', '<unk>')


class ByteTokenizer:
  """ids 0-3 are <pad> <bos> <eos> <unk>; byte b is id b + 4 (vocabulary 260)."""

  offset = len(BYTE_SPECIALS)
  pad_id, bos_id, eos_id = 0, 1, 2
  vocab_size = 256 + len(BYTE_SPECIALS)
  name = 'bytes'

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + self.offset

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= self.vocab_size)]
    if bad.size:
      raise ValueError(f'token id {int(bad[0])} is outside the vocabulary (size {self.vocab_size})')
    if skip_special:
      ids = ids[ids >= self.offset]
    elif (ids < self.offset).any():
      return ''.join(BYTE_SPECIALS[i] if i < self.offset else bytes([i - self.offset]).decode(
          'utf-8', errors='replace') for i in ids.tolist())
    return bytes((ids - self.offset).astype(np.uint8).tolist()).decode('utf-8', errors='replace')


def checked_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
  """ids as a flat list of ints, each in [0, vocab_size) (else a ValueError naming it)."""
  out = [int(i) for i in np.asarray(ids).reshape(-1)]
  bad = [i for i in out if not 0 <= i < vocab_size]
  if bad:
    raise ValueError(f'token id {bad[0]} is outside the vocabulary (size {vocab_size})')
  return out


class HFTokenizer:
  """A transformers tokenizer from a local directory. Its EOS token ends every answer; PAD is its
  pad token, else EOS (padding is masked everywhere, so the id only has to be valid)."""

  def __init__(self, directory: str):
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'data.tokenizer={directory!r}: not a directory. Use "bytes" or a '
                              'local Hugging Face tokenizer directory (tokenizer.json or '
                              'vocab.json + merges.txt); nothing is downloaded')
    from transformers import AutoTokenizer
    try:
      self._tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the config field named
      raise ValueError(f'data.tokenizer={directory!r}: transformers could not load a tokenizer '
                       f'from it ({type(e).__name__}: {e})') from e
    if self._tok.eos_token_id is None:
      raise ValueError(f'data.tokenizer={directory!r}: the tokenizer has no EOS token, which ends '
                       'every answer')
    self.eos_id = int(self._tok.eos_token_id)
    pad = self._tok.pad_token_id
    self.pad_id = int(self.eos_id if pad is None else pad)
    self.bos_id = self._tok.bos_token_id
    self.vocab_size = len(self._tok)
    self.name = directory

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False), np.int32)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode(checked_ids(ids, self.vocab_size), skip_special_tokens=skip_special)


def make_tokenizer(spec: str):
  """'bytes', a local Hugging Face tokenizer directory, a .gguf file (its own tokenizer) or a
  pretrained model name (models.pretrained.NAMED, e.g. 'smollm2-135m')."""
  if spec == 'bytes':
    return ByteTokenizer()
  if not spec:
    raise ValueError('data.tokenizer is empty; allowed: "bytes", a local tokenizer directory, a '
                     '.gguf file or a pretrained model name')
  from gradmem_jax.models import pretrained
  if spec in pretrained.NAMED or (os.path.isfile(spec) and spec.endswith('.gguf')):
    from gradmem_jax.models.gguf import GGUFTokenizer
    return GGUFTokenizer(pretrained.locate(spec, 'data.tokenizer')[1])
  return HFTokenizer(spec)
