"""User-facing programs built on the library: the quickstart, the parameter summary, the training
plot, the serving fit check (`generate_fit`).

May import every other package of `flamingo_jax`, `data_pipelines` and `experiments`.
"""
