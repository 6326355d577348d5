"""Cached decoding (greedy, beam search, sampling, likelihood scoring; on one device or a mesh), the
continuous-batching engine the HTTP server runs (`engine`), and the generation CLI.

May import: `flamingo_jax.config`, `flamingo_jax.sharding`, `flamingo_jax.models`,
`flamingo_jax.weights`, `data_pipelines`. Never the trainer.
"""
