"""The paper presets' parameter counts, from abstract shapes only (FLAMINGO.md, Table 4/5)."""

import pytest

from experiments import flamingo
from flamingo_jax.config import FlamingoConfig
from flamingo_jax.tools.summary import component_counts

PAPER = {  # Millions of parameters: vision, LM, resampler, xattn (FLAMINGO.md).
    "flamingo_3b": dict(vision=435, lm=1400, resampler=194, xattn=1200),
    "flamingo_9b": dict(vision=435, lm=7100, resampler=194, xattn=1600),
    "flamingo_80b": dict(vision=435, lm=70000, resampler=194, xattn=10000),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_component_counts_within_5_percent(preset):
  counts = component_counts(FlamingoConfig.from_dict(flamingo.get_config(preset).model))
  for component, paper_millions in PAPER[preset].items():
    ours = sum(counts[component].values()) / 1e6
    assert abs(ours / paper_millions - 1) <= 0.05, (component, ours, paper_millions)
  assert counts["vision"]["trainable"] == counts["lm"]["trainable"] == 0
  assert counts["resampler"]["frozen"] == counts["xattn"]["frozen"] == 0
  total_paper = {"flamingo_3b": 3200, "flamingo_9b": 9300, "flamingo_80b": 80000}[preset]
  total = (counts["total"]["frozen"] + counts["total"]["trainable"]) / 1e6
  assert abs(total / total_paper - 1) <= 0.05


@pytest.mark.parametrize("preset, blocks", [("flamingo_3b", 24), ("flamingo_9b", 10),
                                            ("flamingo_80b", 12)])
def test_number_of_gated_blocks(preset, blocks):
  config = FlamingoConfig.from_dict(flamingo.get_config(preset).model)
  counts = component_counts(config)
  x = config.xattn
  per_block = (x.num_heads * x.head_dim * (2 * config.lm.width + 2 * config.resampler.width)
               + 2 * x.ffw_mult * config.lm.width ** 2)
  assert counts["xattn"]["trainable"] // per_block == blocks
