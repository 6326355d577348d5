"""Every way a parameter tree is read or written: the frozen / trainable split (`tree`), layer
layouts (`layout`), orbax files and run checkpoints (`store`), pretrained towers, stage exports and
trained runs (`pretrained`), and Hugging Face imports (`hf`).

May import: `flamingo_jax.config`, `flamingo_jax.sharding`, `flamingo_jax.models`.
"""
