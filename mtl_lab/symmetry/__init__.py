"""Symmetry tools for ReLU MLP trunks with linear heads (SCIENCE.md §6): function-preserving
rescalings (ENorm, path-conditioned, then a constant c) and the numerical count of conservation
laws.

* :mod:`.mlp` — the networks understood (a chain of Linear + ReLU plus linear heads; anything else
  is refused with :class:`NotAnMLP`) and :class:`Architecture`, a shape without weights
  (``"15-8-8:2,1 bias"``).
* :mod:`.rescaling` — :func:`enorm`, :func:`path_conditioned`, :func:`balanced_then_c`, the
  one-pass diagonal of the path kernel :func:`path_kernel_diagonal`, and :class:`Rescaling`, a
  named callable for ``FinetuneModule(rescale=...)``.
* :mod:`.laws` — :func:`count_laws` (D − dim Lie(W)(θ) at a random point) and
  :func:`known_laws`.
* :mod:`.channels` — ENorm across the BatchNorm → ReLU → conv channels of a ResNet's blocks
  (what ``enorm`` does when the trunk is not an MLP).
* :mod:`.configs` — :func:`fits_of`: the networks a comparison config trains, to count their laws
  (``mtl-lab symmetry count CONFIG.yaml``).

Example:
    >>> arch = Architecture.parse("2-3:1")
    >>> result = count_laws(arch)
    >>> result.laws, known_laws(arch).count
    (3, 3)
"""

from mtl_lab.symmetry.configs import Fit, fits_of
from mtl_lab.symmetry.laws import KnownLaws, LawCount, count_laws, known_laws, lifting
from mtl_lab.symmetry.mlp import MLP, Architecture, NotAnMLP, TooLarge
from mtl_lab.symmetry.rescaling import (
    METHODS,
    RescaleRecord,
    Rescaling,
    apply_log_scales,
    balanced_then_c,
    enorm,
    neuron_balance,
    path_conditioned,
    path_kernel_diagonal,
)

__all__ = [
    "METHODS",
    "MLP",
    "Architecture",
    "Fit",
    "KnownLaws",
    "LawCount",
    "NotAnMLP",
    "RescaleRecord",
    "Rescaling",
    "TooLarge",
    "apply_log_scales",
    "balanced_then_c",
    "count_laws",
    "enorm",
    "fits_of",
    "known_laws",
    "lifting",
    "neuron_balance",
    "path_conditioned",
    "path_kernel_diagonal",
]
