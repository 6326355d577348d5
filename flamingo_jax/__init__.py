"""flamingo_jax: Flamingo-style visual language models in JAX / Flax Linen."""

from flamingo_jax.config import FlamingoConfig
from flamingo_jax.model import Flamingo

__all__ = ["Flamingo", "FlamingoConfig"]
