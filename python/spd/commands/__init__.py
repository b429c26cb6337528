"""Subcommands of ``spd``: one module each (see :mod:`spd.cli`)."""
