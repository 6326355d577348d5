"""flamingo_jax: Flamingo-style visual language models in JAX / Flax Linen.

Sub-packages by role (docs/architecture.md): config, models, weights, training, inference,
evaluation, tools; `sharding` maps parameters and activations onto the device mesh. This file only
names the two things most users start from.
"""

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.models.flamingo import Flamingo

__all__ = ["Flamingo", "FlamingoConfig"]
