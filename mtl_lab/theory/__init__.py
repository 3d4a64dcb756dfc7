"""The theory's predictions: implicit-bias solutions of diagonal networks (SCIENCE.md §4).

:mod:`mtl_lab.theory.diagonal` solves ``argmin R(beta) s.t. X beta = y`` for the STL, PT+FT and
MTL penalties of :mod:`mtl_lab.analysis.penalties`, with certified accuracy;
:mod:`mtl_lab.theory.predict` turns a results row of a diagonal run into the theory's
main-task test loss (``mtl-lab report --theory``).
"""

from mtl_lab.theory.diagonal import (
    InfeasibleError,
    NotConvergedError,
    Prediction,
    finetune_scale,
    flow_scale,
    mirror_solution,
    mtl_solution,
    predicted_test_loss,
    ptft_exact_solution,
    ptft_scale,
    ptft_solution,
    stl_scale,
    stl_solution,
    stl_trunk,
)

__all__ = [
    "InfeasibleError",
    "NotConvergedError",
    "Prediction",
    "finetune_scale",
    "flow_scale",
    "mirror_solution",
    "mtl_solution",
    "predicted_test_loss",
    "ptft_exact_solution",
    "ptft_scale",
    "ptft_solution",
    "stl_scale",
    "stl_solution",
    "stl_trunk",
]
