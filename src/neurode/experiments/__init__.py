"""Experiments and the ``neurode`` command (depends on `neurode.nn` and below)."""
