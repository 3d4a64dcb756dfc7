"""The lab's errors for bad input, named before any compute starts (no torch needed to import).

The CLI prints them as one line ``error: …`` and exits with status 2, without a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a config, a folder, a file or a value the lab cannot use as given."""


class ConfigError(InputError):
    """A config problem, reported before any compute starts."""


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt, or not an mtl-lab network."""
