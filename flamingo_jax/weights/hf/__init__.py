"""Hugging Face safetensors checkpoints -> our parameter trees: the file reader, config.json ->
our config fields, the tensor name / layout maps, and the import CLI.

May import: `flamingo_jax.config`, `flamingo_jax.models`, `flamingo_jax.weights`.
"""
