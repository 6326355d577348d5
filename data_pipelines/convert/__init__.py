"""Converters to dataset directories of ArrayRecord shards, as Apache Beam pipelines.

  __main__.py  the CLI (`python -m data_pipelines.convert SOURCE --out DIR ...`)
  pipeline.py  the Beam pipeline and the summary
  inputs.py    inputs -> units (lines, rows, tar samples, folder entries)
  sources.py   units -> records, per source (`Converter`)
  rows.py      row layouts (OBELICS, MMC4, pair, video) and their checks
  media.py     media reading inside the media root, checks, 1 fps sampling
  outcome.py   what one unit gives: records, counts, reject-log lines
"""
