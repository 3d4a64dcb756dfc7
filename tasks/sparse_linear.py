"""Family ``sparse_linear``: two sparse linear teachers with controlled support overlap.

beta_aux has k_aux nonzeros ±a_aux; beta_main has k_main nonzeros ±a_main, of which
``overlap`` coordinates are shared with the aux support (with the same signs) and the rest
are fresh coordinates. y = x · beta (+ noise).

The weight scales are parameters (SCIENCE.md §3): ``aux_scale`` and ``main_scale`` are
``"1/sqrt(k)"`` (the default: a = 1/√k, so the loss of predicting zero is ≈ 1), ``"1/k"``
(a = 1/k, zero-predictor loss ≈ 1/k, as in some of the paper's nested and disjoint experiments)
or a positive number (a itself).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from tasks.registry import register_family
from tasks.sampling import (
    PosInt,
    TeacherStudentParams,
    random_signs,
    teacher_rng,
    teacher_student_splits,
)


class SparseLinearParams(TeacherStudentParams):
    """Parameters of ``sparse_linear`` (exactly one of ``overlap`` or ``nested=True``)."""

    d: PosInt
    k_aux: PosInt
    k_main: PosInt
    overlap: Annotated[int, Field(ge=0)] | None = None
    nested: bool = False
    aux_scale: Literal["1/sqrt(k)", "1/k"] | Annotated[float, Field(gt=0)] = "1/sqrt(k)"
    main_scale: Literal["1/sqrt(k)", "1/k"] | Annotated[float, Field(gt=0)] = "1/sqrt(k)"

    @model_validator(mode="after")
    def _check_supports(self) -> SparseLinearParams:
        if self.nested and self.overlap is not None:
            raise ValueError(
                "give exactly one of overlap or nested=True, not both (overlap, nested)"
            )
        if not self.nested and self.overlap is None:
            raise ValueError("give exactly one of overlap or nested=True (overlap is missing)")
        if self.nested and self.k_main > self.k_aux:
            raise ValueError(
                f"nested=True requires k_main <= k_aux, got k_main ({self.k_main}) > "
                f"k_aux ({self.k_aux})"
            )
        s = self.effective_overlap
        if s > self.k_main:
            raise ValueError(f"overlap ({s}) > k_main ({self.k_main})")
        if s > self.k_aux:
            raise ValueError(f"overlap ({s}) > k_aux ({self.k_aux})")
        if self.k_aux > self.d:
            raise ValueError(f"k_aux ({self.k_aux}) > d ({self.d})")
        needed = self.k_aux + self.k_main - s
        if needed > self.d:
            raise ValueError(
                f"k_aux + (k_main - overlap) = {needed} > d ({self.d}): not enough coordinates"
            )
        return self

    @staticmethod
    def weight(scale: str | float, k: int) -> float:
        """The magnitude a of each nonzero teacher weight for a support of size k."""
        if scale == "1/sqrt(k)":
            return 1.0 / float(np.sqrt(k))
        if scale == "1/k":
            return 1.0 / k
        return float(scale)

    @property
    def effective_overlap(self) -> int:
        """Number of shared coordinates: ``overlap``, or k_main when ``nested``."""
        return self.k_main if self.nested else int(self.overlap or 0)


def sparse_linear_teacher(params: SparseLinearParams, seed: int) -> dict[str, np.ndarray]:
    """Draw beta_aux, beta_main ∈ R^d from stream 0.

    perm = permutation(d); aux support perm[:k_aux] with signs s, beta_aux = s·a_aux.
    Main support = ``overlap`` random aux coordinates (same signs) +
    perm[k_aux : k_aux + k_main - overlap] (fresh signs); beta_main = sign·a_main
    (a = 1/√k by default; see the module docstring).
    """
    d, k_aux, k_main = params.d, params.k_aux, params.k_main
    overlap = params.effective_overlap
    rng = teacher_rng(seed)
    perm = rng.permutation(d)
    aux_idx = perm[:k_aux]
    aux_signs = random_signs(rng, k_aux)
    shared_pos = rng.choice(k_aux, size=overlap, replace=False)
    fresh_idx = perm[k_aux : k_aux + k_main - overlap]
    fresh_signs = random_signs(rng, k_main - overlap)

    beta_aux = np.zeros(d)
    a_aux = params.weight(params.aux_scale, k_aux)
    a_main = params.weight(params.main_scale, k_main)
    beta_aux[aux_idx] = aux_signs * a_aux
    beta_main = np.zeros(d)
    beta_main[aux_idx[shared_pos]] = aux_signs[shared_pos] * a_main
    beta_main[fresh_idx] = fresh_signs * a_main
    return {"beta_aux": beta_aux, "beta_main": beta_main}


@register_family("sparse_linear", SparseLinearParams, teacher=sparse_linear_teacher, version=1)
def generate_sparse_linear(
    params: SparseLinearParams, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generate splits with y_aux = x · beta_aux and y_main = x · beta_main (+ noise_std · ξ)."""
    t = sparse_linear_teacher(params, seed)
    beta_aux, beta_main = t["beta_aux"], t["beta_main"]
    sizes = {
        "aux_train": params.n_aux,
        "main_train": params.n_main,
        "aux_test": params.n_test,
        "main_test": params.n_test,
    }
    targets = {
        "aux_train": lambda x: x @ beta_aux,
        "main_train": lambda x: x @ beta_main,
        "aux_test": lambda x: x @ beta_aux,
        "main_test": lambda x: x @ beta_main,
    }
    return teacher_student_splits(seed, params.d, sizes, targets, params.noise_std)
