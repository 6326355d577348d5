"""Experiment configs: each file defines `get_config(arg)` returning an ml_collections ConfigDict."""
