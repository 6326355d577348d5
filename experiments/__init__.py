"""Presets: `get_config(arg)` files for `--config experiments/<file>.py:<arg>` (arguments as keys,
`flamingo.py:tiny,data=demo`), and the project's sweeps. Every field they set is documented in
`flamingo_jax/config/`.

May import `flamingo_jax.config` and `flamingo_jax.weights` (a checkpoint's config mapping).
"""
