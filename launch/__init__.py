"""Where the trainer runs: a TPU pod, a SLURM cluster, one host; the ahead-of-time fit check; sweeps.

May import `flamingo_jax.config`, `flamingo_jax.training` and `flamingo_jax.evaluation`.
"""
