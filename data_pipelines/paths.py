"""Paths from data (a record's media name, a request's image path) kept inside their root."""

from __future__ import annotations

import os


def under(root: str, name: str) -> str | None:
  """The real path of `name` joined to `root` (symlinks followed; an absolute `name` replaces the
  root), or None when that path leads out of `root`'s real path. ValueError for a NUL byte."""
  real_root = os.path.realpath(root)
  path = os.path.realpath(os.path.join(real_root, name))
  return path if os.path.commonpath([path, real_root]) == real_root else None
