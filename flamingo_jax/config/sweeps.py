"""Config sweeps: lists of flat overrides built from products, zips and chains, expanded into runs.

A sweep is a list of override dicts {"dotted.config.key": value}; `sweep(key, values)` is one axis,
`product` crosses axes, `zip_` pairs them element-wise, `chain` concatenates. `expand` applies each
override dict to a base config, names the run from its overrides and gives it its own workdir:

  lr_x_every = product(sweep("optimizer.learning_rate", [3e-4, 1e-3]),
                       sweep("model.xattn.every", [1, 2]))
  runs = expand(base_config, lr_x_every, "workdirs/sweeps/lr_x_every")
  runs[0].name  # "learning_rate=0.0003,every=1"; runs[0].workdir: <root>/<name>

`experiments/sweeps.py` holds the project's sweeps; `launch/sweep.py` prints or runs them.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any, Mapping, Sequence

from flamingo_jax.config.run import Config

Overrides = dict[str, Any]


def sweep(key: str, values: Sequence[Any]) -> list[Overrides]:
  """One axis: [{key: v} for v in values]."""
  return [{key: value} for value in values]


def product(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """Every combination, the last sweep varying fastest."""
  return [_merged(combo) for combo in itertools.product(*sweeps)]


def zip_(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """Element-wise pairs of sweeps of one length."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"zip_: the sweeps have different lengths {sorted(lengths)}.")
  return [_merged(combo) for combo in zip(*sweeps)]


def chain(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """The runs of every sweep, one after the other."""
  return [dict(o) for s in sweeps for o in s]


def _merged(parts: Sequence[Overrides]) -> Overrides:
  out: Overrides = {}
  for part in parts:
    clash = set(out) & set(part)
    if clash:
      raise ValueError(f"Sweep axes set the same key twice: {', '.join(sorted(clash))}.")
    out.update(part)
  return out


def run_name(overrides: Mapping[str, Any]) -> str:
  """A readable directory name: `key=value` for each override, joined by commas, where key is the
  last component of the dotted key (the whole key where two overrides share one); "baseline" for no
  overrides. Characters other than letters, digits and `_.=,-` become `_`."""
  if not overrides:
    return "baseline"
  last = [key.rsplit(".", 1)[-1] for key in overrides]
  parts = [f"{short if last.count(short) == 1 else key}={value}"
           for (key, value), short in zip(overrides.items(), last)]
  return re.sub(r"[^A-Za-z0-9_.=,\-]", "_", ",".join(parts))


def apply_overrides(config: Config, overrides: Mapping[str, Any], run: str = "") -> Config:
  """`config` with the flat overrides set, the whole config checked again; an unknown key or an
  impossible value is an error naming the key and the run."""
  try:
    return config.replace(overrides)
  except ValueError as e:
    raise ValueError(f"Sweep run {run!r}: {e}" if run else str(e)) from None


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # run_name(overrides), unique within the sweep.
  overrides: Overrides  # Flat {dotted key: value}.
  workdir: str  # <sweep workdir>/<name>.
  config: Config  # The base config with the overrides applied, checked.


def expand(base: Config, overrides_list: Sequence[Overrides], workdir: str) -> list[Run]:
  """The runs of a sweep, in order, each config checked before any run starts; two runs with the
  same overrides (the same name) are an error."""
  runs, seen = [], set()
  for overrides in overrides_list:
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"The sweep has two runs named {name!r}; remove the duplicate overrides.")
    seen.add(name)
    runs.append(Run(name, dict(overrides), os.path.join(workdir, name),
                    apply_overrides(base, overrides, name)))
  return runs


def command_flag(key: str, value: Any) -> str:
  """The `--config.<key>=<value>` flag that sets the override on the command line."""
  return f"--config.{key}={value}"
