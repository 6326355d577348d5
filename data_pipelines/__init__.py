"""Data in and out of the trainer: records and shards, the tokenizer, image decoding, records ->
examples, grain streams, the dataset mixture (`mixture.from_config`), the synthetic stream, the demo
corpus, converters from web formats, and the evaluation sets.

May import `flamingo_jax.config`, `flamingo_jax.models` (the media index) and `flamingo_jax.weights`
(a checkpoint's token ids); never the trainer, inference or evaluation.
"""
