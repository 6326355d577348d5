"""Sweeps over experiments/flamingo.py configs: `get_sweep(name)` -> list of flat overrides.

  python -m launch.sweep --config experiments/flamingo.py:tiny,data=demo \
      --sweep experiments/sweeps.py:ablations --dry-run      # or --run

  ablations    the paper's ablation switches (FLAMINGO.md, Ablations), one change per run against the
               baseline (the config as given), plus the baseline with another seed (the noise floor):
               no interleaved data, no tanh gate, gated blocks every 1 / 4 layers (tiny: 2), an MLP
               instead of the Perceiver Resampler, unfrozen LM, all-previous-images attention,
               round-robin instead of accumulation over datasets.
  lr_x_every   learning rate x gated-block interval (a product).
  seeds        three seeds, model initialisation and data order together (a zip).

Combinators (`sweep`, `product`, `zip_`, `chain`) and run naming: flamingo_jax/config/sweeps.py.
"""

from flamingo_jax.config.sweeps import chain, product, sweep, zip_

SWEEPS = ("ablations", "lr_x_every", "seeds")


def get_sweep(name: str) -> list[dict]:
  if name == "ablations":
    return chain(
        [{}],  # The baseline.
        zip_(sweep("seed", [1]), sweep("data.seed", [1])),  # The baseline again: the noise floor.
        sweep("data.exclude", ["interleaved"]),
        sweep("model.xattn.gate", ["none"]),
        sweep("model.xattn.every", [1, 4]),
        sweep("model.resampler.kind", ["mlp"]),
        sweep("train.freeze_lm", [False]),
        sweep("model.xattn.media_attention", ["all_previous"]),
        sweep("data.accumulation", ["round_robin"]),
    )
  if name == "lr_x_every":
    return product(sweep("optimizer.learning_rate", [3e-4, 1e-3]),
                   sweep("model.xattn.every", [1, 2]))
  if name == "seeds":
    return zip_(sweep("seed", [0, 1, 2]), sweep("data.seed", [0, 1, 2]))
  raise ValueError(f"Unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}.")
