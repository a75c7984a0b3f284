"""Registries by name (tasks, methods, backbone families) and typed config sections.

A plug-in registers itself where it is defined:

  @TASKS.register('kv')
  class KVTask: ...

and the runner looks it up by the name a config gives (`data.task=kv`). Nothing outside the
plug-in's own module names it: adding a task, a method or a model family is one module plus the
import that registers it (the package `__init__`, or a test file for a toy plug-in).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """Name -> object. `field` is the config field that selects an entry (used in errors)."""

  def __init__(self, what: str, field: str):
    self.what = what
    self.field = field
    self._items: dict[str, T] = {}

  def register(self, name: str, obj: Any = None, *, replace: bool = False):
    """`REG.register('name', obj)`, or `@REG.register('name')` as a decorator."""
    def add(o):
      if name in self._items and not replace and self._items[name] is not o:
        raise ValueError(f'{self.what} {name!r} is already registered ({self._items[name]!r})')
      self._items[name] = o
      return o
    return add if obj is None else add(obj)

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(f'{self.field}={name!r} is not a known {self.what}; allowed: '
                       f'{sorted(self._items)}')
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))

  def names(self) -> list[str]:
    return sorted(self._items)


def from_section(cls: Callable[..., T], section: Mapping[str, Any], prefix: str,
                 what: str) -> T:
  """A dataclass from a config section (ConfigDict or dict); an unknown key is an error naming
  `prefix.key` and the allowed fields. Runs `validate()` when the dataclass has one."""
  d = dict(section)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f'{prefix}.{unknown[0]} is not {what} option; allowed: {sorted(fields)}')
  obj = cls(**d)
  if hasattr(obj, 'validate'):
    obj.validate()
  return obj


def dataclass_defaults(cls) -> dict:
  """{field: default} of a dataclass: the one place where a section's defaults live."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      out[f.name] = f.default_factory()  # type: ignore[misc]
  return out
