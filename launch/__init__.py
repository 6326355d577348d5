"""Launchers: AOT fit checks, TPU pod / SLURM / single-host runs (launch/README.md)."""
