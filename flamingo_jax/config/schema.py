"""Typed config sections: frozen dataclasses built from mappings, every value checked on the way in.

A section is a frozen dataclass deriving from `Section`; each field is documented once, next to its
definition, and the section's `check(prefix)` rejects impossible values. `Section.from_dict` builds a
section (and every section inside it) from an `ml_collections.ConfigDict`, a dict or parsed JSON:
an unknown field, a value of the wrong type or an impossible value is a `ValueError` naming the
field's full name, e.g. `Invalid config: data.datasets.pairs.batch_size=0: must be > 0.` Sections
check themselves after their children, so a cross-field rule sees valid parts.

Field types understood: bool, int, float (an int is accepted), str, tuple[T, ...] and tuple[T, T],
a nested Section, and dict[str, Section] (named sub-sections, e.g. the datasets).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Sequence, TypeVar

import ml_collections

S = TypeVar("S", bound="Section")


class ConfigError(ValueError):
  """A config that cannot run, naming the field to change (command lines print it, no traceback)."""


def fail(field: str, value: Any, why: str):
  """Raises the config error every check uses: `Invalid config: <field>=<value>: <why>`."""
  raise ConfigError(f"Invalid config: {field}={value!r}: {why}")


def join(prefix: str, name: str) -> str:
  """The full name of field `name` in the section at `prefix` ("" is the root)."""
  return f"{prefix}.{name}" if prefix else name


def positive(prefix: str, section, *names: str) -> None:
  for name in names:
    value = getattr(section, name)
    if value <= 0:
      fail(join(prefix, name), value, "must be > 0.")


def non_negative(prefix: str, section, *names: str) -> None:
  for name in names:
    value = getattr(section, name)
    if value < 0:
      fail(join(prefix, name), value, "must be >= 0.")


def one_of(prefix: str, section, name: str, choices: Sequence[str]) -> None:
  value = getattr(section, name)
  if value not in choices:
    fail(join(prefix, name), value, f"must be one of {', '.join(choices)}.")


class Section:
  """Base of every config section (a frozen dataclass)."""

  def check(self, prefix: str) -> None:
    """Raises ValueError (through `fail`) naming the first impossible field; sections override it."""

  @classmethod
  def from_dict(cls: type[S], data: Mapping[str, Any], prefix: str = "") -> S:
    """The section built from `data` and checked; `prefix` is its full name in error messages."""
    return _build(cls, data, prefix)

  @classmethod
  def from_cli(cls: type[S], data: Mapping[str, Any], prefix: str = "") -> S:
    """`from_dict` for a command line: an impossible config ends the program with its one-line
    error (exit status 1), not a traceback."""
    try:
      return cls.from_dict(data, prefix)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None

  def as_config_dict(self) -> ml_collections.ConfigDict:
    """The section as a ConfigDict (the user-facing format: presets, `--config.x=y` overrides)."""
    return ml_collections.ConfigDict(dataclasses.asdict(self))

  def to_dict(self) -> dict[str, Any]:
    """Plain nested dicts and tuples (JSON-ready); `from_dict` reads it back."""
    return dataclasses.asdict(self)

  def replace(self: S, overrides: Mapping[str, Any], prefix: str = "") -> S:
    """A copy with flat overrides {"train.num_steps": 5, ...} applied, built and checked again; an
    override of a field that does not exist is an error naming it."""
    data = self.to_dict()
    for key, value in overrides.items():
      *parents, leaf = key.split(".")
      node = data
      for part in parents:
        if not isinstance(node.get(part), dict):
          raise ValueError(f"Unknown config field {join(prefix, key)}: "
                           f"{join(prefix, '.'.join(parents))} is not a section.")
        node = node[part]
      if leaf not in node and not _holds_sections(type(self), parents):
        raise ValueError(f"Unknown config field {join(prefix, key)}; fields there: "
                         f"{', '.join(sorted(node))}.")
      node[leaf] = value
    return type(self).from_dict(data, prefix)


def _holds_sections(cls: type, path: Sequence[str]) -> bool:
  """Whether the field at `path` below `cls` is a dict of named sections (new names allowed)."""
  hint: Any = cls
  for part in path:
    if not (dataclasses.is_dataclass(hint) and part in {f.name for f in dataclasses.fields(hint)}):
      return False
    hint = typing.get_type_hints(hint)[part]
  return typing.get_origin(hint) is dict


def _build(cls: type[S], data: Any, prefix: str) -> S:
  if isinstance(data, Section):  # Checked again, children first.
    data = data.to_dict()
  if isinstance(data, ml_collections.ConfigDict):
    data = data.to_dict()
  if not isinstance(data, Mapping):
    fail(prefix or "config", data, f"must be a section (a mapping of {cls.__name__} fields).")
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(data) - set(names))
  if unknown:
    raise ValueError(f"Unknown config field(s) {', '.join(join(prefix, u) for u in unknown)}; "
                     f"known fields are: {', '.join(sorted(names))}.")
  section = cls(**{name: _value(hints[name], data[name], join(prefix, name))
                   for name in names if name in data})
  section.check(prefix)
  return section


def _value(hint: Any, value: Any, field: str) -> Any:
  """`value` as the field's type `hint`, or an error naming `field`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if isinstance(hint, type) and issubclass(hint, Section):
    return _build(hint, value, field)
  if origin is dict:
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    if not isinstance(value, Mapping):
      fail(field, value, "must be a mapping of names to sections.")
    return {str(k): _value(args[1], v, join(field, str(k))) for k, v in value.items()}
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      fail(field, value, "must be a list.")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_value(args[0], v, field) for v in value)
    if len(value) != len(args):
      fail(field, value, f"must have {len(args)} values.")
    return tuple(_value(a, v, field) for a, v in zip(args, value))
  if hint is bool:
    if not isinstance(value, bool):
      fail(field, value, "must be true or false.")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      fail(field, value, "must be an integer.")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(field, value, "must be a number.")
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      fail(field, value, "must be a string.")
    return value
  raise TypeError(f"Config field {field} has a type the schema does not read: {hint}.")
