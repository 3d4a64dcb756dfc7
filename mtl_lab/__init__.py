"""mtl-lab: the inductive biases of multi-task learning and pretraining-then-finetuning.

Layers, in dependency order: ``tasks`` (task families) → ``mtl_lab.models`` (shared trunk +
heads) → ``mtl_lab.regimes`` (STL, MTL, PT+FT, PT+LP, lazy references) → ``mtl_lab.engine``
(batched full-batch GD, Lightning recipes) → ``mtl_lab.comparison`` (runs, results table) →
``mtl_lab.cli``.
"""

from mtl_lab.comparison import comparison_table, run_comparison
from mtl_lab.config import ComparisonConfig, ConfigError, load_config, validate_config

__version__ = "0.1.0"

__all__ = [
    "ComparisonConfig",
    "ConfigError",
    "comparison_table",
    "load_config",
    "run_comparison",
    "validate_config",
]
