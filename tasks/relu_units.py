"""Family ``relu_units``: two one-hidden-layer ReLU teachers with correlated units.

Let U be a Haar-random orthogonal d×d matrix with rows u_1..u_d. The aux teacher is
f_aux(x) = Σ_{i<m_aux} a_i ReLU(⟨u_i, x⟩); main unit i has weight
w_i = magnitude_i · (ρ_i u_i + √(1−ρ_i²) u_{m_aux+i}) and
f_main(x) = Σ_{i<m_main} b_i ReLU(⟨w_i, x⟩).
"""

from __future__ import annotations

from typing import Annotated

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

Rho = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Magnitude = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class ReluUnitsParams(TeacherStudentParams):
    """Parameters of ``relu_units``; scalar correlation/magnitude broadcast to m_main values.

    After validation ``correlation`` and ``magnitude`` are always lists of length m_main, so a
    scalar and the equivalent list give the same cache key.
    """

    d: PosInt = 15
    m_aux: PosInt = 6
    m_main: PosInt = 6
    correlation: Rho | list[Rho]
    magnitude: Magnitude | list[Magnitude] = 1.0

    @model_validator(mode="after")
    def _check_shapes(self) -> ReluUnitsParams:
        if self.m_aux + self.m_main > self.d:
            raise ValueError(f"m_aux + m_main ({self.m_aux} + {self.m_main}) > d ({self.d})")
        for name in ("correlation", "magnitude"):
            value = getattr(self, name)
            if isinstance(value, list):
                if len(value) != self.m_main:
                    raise ValueError(f"{name} has length {len(value)} but m_main is {self.m_main}")
                values = [float(v) for v in value]
            else:
                values = [float(value)] * self.m_main
            object.__setattr__(self, name, values)
        if any(r > 0 for r in self.correlation) and self.m_main > self.m_aux:
            raise ValueError(
                f"correlation > 0 requires m_main <= m_aux, got m_main ({self.m_main}) > "
                f"m_aux ({self.m_aux})"
            )
        return self

    @property
    def rhos(self) -> np.ndarray:
        """Per-main-unit correlations ρ_i, shape (m_main,)."""
        return np.asarray(self.correlation, dtype=np.float64)

    @property
    def magnitudes(self) -> np.ndarray:
        """Per-main-unit weight norms, shape (m_main,)."""
        return np.asarray(self.magnitude, dtype=np.float64)


def haar_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """Return a Haar-random orthogonal d×d matrix: Q from QR(G), columns scaled by sign(diag R)."""
    g = rng.standard_normal((d, d))
    q, r = np.linalg.qr(g)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def relu_units_teacher(params: ReluUnitsParams, seed: int) -> dict[str, np.ndarray]:
    """Draw the teacher from stream 0.

    U Haar orthogonal (u_i = i-th row of U), a_i = ±1/√m_aux, b_i = ±1/√m_main,
    aux_units = u_{0..m_aux-1}, main_units[i] = magnitude_i (ρ_i u_i + √(1−ρ_i²) u_{m_aux+i}).
    """
    d, m_aux, m_main = params.d, params.m_aux, params.m_main
    rng = teacher_rng(seed)
    u = haar_orthogonal(rng, d).T  # rows u_1..u_d are orthonormal
    aux_readout = random_signs(rng, m_aux) / np.sqrt(m_aux)
    main_readout = random_signs(rng, m_main) / np.sqrt(m_main)
    rho = params.rhos
    aux_units = u[:m_aux].copy()
    fresh = u[m_aux : m_aux + m_main]
    shared = u[:m_main] if m_main <= m_aux else np.zeros((m_main, d))  # ρ = 0 when m_main > m_aux
    main_units = params.magnitudes[:, None] * (
        rho[:, None] * shared + np.sqrt(1.0 - rho**2)[:, None] * fresh
    )
    return {
        "aux_units": aux_units,
        "aux_readout": aux_readout,
        "main_units": main_units,
        "main_readout": main_readout,
    }


def relu_teacher_output(x: np.ndarray, units: np.ndarray, readout: np.ndarray) -> np.ndarray:
    """Return Σ_i readout_i · ReLU(⟨units_i, x⟩) for every row of x (float64)."""
    return np.maximum(x @ units.T, 0.0) @ readout


@register_family("relu_units", ReluUnitsParams, teacher=relu_units_teacher, version=1)
def generate_relu_units(
    params: ReluUnitsParams, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generate splits with y_aux = f_aux(x), y_main = f_main(x) (+ noise_std · ξ)."""
    t = relu_units_teacher(params, seed)

    def f_aux(x: np.ndarray) -> np.ndarray:
        return relu_teacher_output(x, t["aux_units"], t["aux_readout"])

    def f_main(x: np.ndarray) -> np.ndarray:
        return relu_teacher_output(x, t["main_units"], t["main_readout"])

    sizes = {
        "aux_train": params.n_aux,
        "main_train": params.n_main,
        "aux_test": params.n_test,
        "main_test": params.n_test,
    }
    targets = {"aux_train": f_aux, "main_train": f_main, "aux_test": f_aux, "main_test": f_main}
    return teacher_student_splits(seed, params.d, sizes, targets, params.noise_std)
