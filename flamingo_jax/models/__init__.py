"""The Flamingo model as pure Flax Linen modules: vision tower, Perceiver Resampler, gated
cross-attention blocks, decoder LM, the media-index masking rule, and the contrastive towers.

May import: `flamingo_jax.config`, `flamingo_jax.sharding`. Never reads or writes files.
"""
