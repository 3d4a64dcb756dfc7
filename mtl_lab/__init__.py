"""mtl-lab: the inductive biases of multi-task learning and pretraining-then-finetuning.

Layers, in dependency order (imports only run downward; ``tests/test_layers.py`` checks it):
``tasks`` (task families) → core (``mtl_lab.config``, ``mtl_lab.regime_specs``: what each
regime is) → ``mtl_lab.models`` (shared trunk + heads, checkpoints) → ``mtl_lab.engine``
(batched full-batch GD, Lightning recipes) → ``mtl_lab.regimes`` (STL, MTL, PT+FT, PT+LP, lazy
references). Beside them, the analyzers (``mtl_lab.analysis`` measures and training-time
callbacks, on models) and the results store with its tables and figures (``mtl_lab.results``,
``mtl_lab.tables``, ``mtl_lab.plots``). Above: execution (``mtl_lab.sweeps``,
``mtl_lab.comparison``: runs, results table) and, independent of it, reports (``mtl-lab
analyze``'s after-the-fact analysis, the sweep report) → ``mtl_lab.cli``.
"""

import mtl_lab.progress  # noqa: F401  (first: it sets how progress bars behave in notebooks)
from mtl_lab.config import ComparisonConfig, ConfigError, load_config, validate_config

__version__ = "0.1.0"
_TRAINING = {"comparison_table", "run_comparison"}  # need torch: imported on first use


def __getattr__(name: str):
    """``run_comparison`` and ``comparison_table`` load torch and Lightning only when first used,
    so that ``mtl-lab --help``, ``mtl-lab config`` and validation answer at once."""
    if name in _TRAINING:
        from mtl_lab import comparison

        return getattr(comparison, name)
    raise AttributeError(f"module 'mtl_lab' has no attribute {name!r}")

__all__ = [
    "ComparisonConfig",
    "ConfigError",
    "comparison_table",
    "load_config",
    "run_comparison",
    "validate_config",
]
