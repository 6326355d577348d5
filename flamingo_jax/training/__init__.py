"""The trainer: setup (mesh, shardings, abstract state), the paper's three stages as tasks, the
update step, losses, optimiser, logs, FLOP counts and the ahead-of-time fit check.

May import: `flamingo_jax.config`, `flamingo_jax.sharding`, `flamingo_jax.models`,
`flamingo_jax.weights`, `data_pipelines`.
"""
