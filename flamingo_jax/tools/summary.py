r"""Parameter table of a config, from abstract shapes only (nothing is allocated).

  python -m flamingo_jax.tools.summary --config experiments/flamingo.py:flamingo_80b [--json]
"""

from __future__ import annotations

import json

import flax.linen as nn
from absl import app, flags
from ml_collections import config_flags

from flamingo_jax.config import Config, FlamingoConfig
from flamingo_jax.models.flamingo import abstract_params
from flamingo_jax.weights import tree as ptree


def component_counts(config: FlamingoConfig) -> dict[str, dict[str, int]]:
  """{component: {"frozen": n, "trainable": n}} plus "total", from `jax.eval_shape`."""
  frozen, trainable = ptree.split(nn.meta.unbox(abstract_params(config)))
  lm_frozen = frozen["lm"]
  lm_trainable = trainable["lm"]
  new_rows, xattn = ptree.split(lm_trainable, lambda path: "xattn" in path)
  table = {
      "vision": {"frozen": ptree.count(frozen["vision"]), "trainable": 0},
      "resampler": {"frozen": 0, "trainable": ptree.count(trainable["resampler"])},
      "lm": {"frozen": ptree.count(lm_frozen), "trainable": 0},
      "xattn": {"frozen": 0, "trainable": ptree.count(xattn)},
      "new_token_rows": {"frozen": 0, "trainable": ptree.count(new_rows)},
  }
  table["total"] = {kind: sum(row[kind] for row in table.values()) for kind in ("frozen", "trainable")}
  return table


def format_table(counts: dict[str, dict[str, int]]) -> str:
  lines = [f"{'component':<16}{'frozen':>18}{'trainable':>18}{'total':>18}"]
  for name, row in counts.items():
    total = row["frozen"] + row["trainable"]
    lines.append(f"{name:<16}{row['frozen']:>18,}{row['trainable']:>18,}{total:>18,}")
  return "\n".join(lines)


def main(argv):
  del argv
  config = Config.from_cli(flags.FLAGS.config).model
  counts = component_counts(config)
  if flags.FLAGS.json:
    print(json.dumps(counts))
  else:
    print(format_table(counts))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiments/<file>.py:<preset>")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.mark_flag_as_required("config")
  app.run(main)
