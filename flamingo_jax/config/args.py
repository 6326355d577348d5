"""Preset arguments as keys: the text after `:` in `--config experiments/<file>.py:<arg>`.

  parse_arg("tiny,data=demo", data="synthetic")  ->  {"preset": "tiny", "data": "demo"}
  parse_arg("paper,tasks=coco+vqav2", tasks=())   ->  {"preset": "paper", "tasks": ("coco", "vqav2")}

The first item is the preset's name; every other item is `key=value` with a key the experiment file
declares (its default gives the type: str, int, bool, or a tuple of strings joined by `+`). An
unknown key or a bare word is an error naming the keys there are.
"""

from __future__ import annotations

from typing import Any


def parse_arg(arg: str, **defaults: Any) -> dict[str, Any]:
  """{"preset": <first item>, key: value for the other items, defaults for the keys not given}."""
  preset, *items = [item.strip() for item in arg.split(",")] if arg else [""]
  if "=" in preset:
    raise ValueError(f"Config argument {arg!r}: start with the preset's name, then key=value items.")
  out = {"preset": preset, **defaults}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      known = ", ".join(f"{k}=..." for k in defaults) or "none"
      raise ValueError(f"Config argument {arg!r}: {item!r} is not key=value with a known key "
                       f"(known: {known}).")
    out[key] = _typed(value, defaults[key], key)
  return out


def _typed(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() not in ("true", "false"):
      raise ValueError(f"Config argument {key}={value!r}: use true or false.")
    return value.lower() == "true"
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"Config argument {key}={value!r}: must be an integer.") from None
  if isinstance(default, tuple):
    return tuple(v for v in value.split("+") if v)
  return value
