"""Experiments and the ``neurode`` command (depends on :mod:`neurode.nn` and below)."""
