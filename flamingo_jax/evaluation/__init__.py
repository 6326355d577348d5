"""Few-shot evaluation (prompts, shot selection, RICES, task runner, metrics, the CLI) and the
held-out loss of a trained run.

May import: everything below it (`config`, `sharding`, `models`, `weights`, `training`, `inference`)
and `data_pipelines`; never `tools`.
"""
