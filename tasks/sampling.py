"""Shared sampling conventions for teacher–student task families.

Every random draw comes from ``np.random.Generator(PCG64(SeedSequence([seed, stream_id])))``
with fixed stream ids, so that inputs depend only on (seed, split, n, d) and never on the
teacher parameters, and a smaller n is an exact prefix of a larger n.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SPLITS: tuple[str, ...] = ("aux_train", "main_train", "aux_test", "main_test")
"""The four splits of every task, in canonical order."""

TEACHER_STREAM = 0
INPUT_STREAMS: dict[str, int] = {"aux_train": 1, "main_train": 2, "aux_test": 3, "main_test": 4}
NOISE_STREAMS: dict[str, int] = {"aux_train": 11, "main_train": 12, "aux_test": 13, "main_test": 14}

Target = Callable[[np.ndarray], np.ndarray]


def make_rng(seed: int, stream_id: int) -> np.random.Generator:
    """Return the generator ``PCG64(SeedSequence([seed, stream_id]))`` for one stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream_id)])))


def teacher_rng(seed: int) -> np.random.Generator:
    """Return the teacher generator (stream 0) for ``seed``."""
    return make_rng(seed, TEACHER_STREAM)


def sample_inputs(seed: int, split: str, n: int, d: int) -> np.ndarray:
    """Draw x ∈ R^{n×d} (float64) with i.i.d. N(0,1) rows rescaled so that ‖x‖² = d.

    Uses the split's input stream only, so x depends only on (seed, split, n, d); the first
    n rows for a given n equal the first n rows for any larger n.
    """
    if split not in INPUT_STREAMS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    rng = make_rng(seed, INPUT_STREAMS[split])
    x = rng.standard_normal((n, d))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * (np.sqrt(d) / norms)


def sample_noise(seed: int, split: str, n: int, noise_std: float) -> np.ndarray:
    """Return noise_std · ξ with ξ ~ N(0, I_n) from the split's noise stream (zeros if 0)."""
    if noise_std <= 0:
        return np.zeros(n)
    rng = make_rng(seed, NOISE_STREAMS[split])
    return noise_std * rng.standard_normal(n)


def teacher_student_splits(
    seed: int,
    d: int,
    sizes: Mapping[str, int],
    targets: Mapping[str, Target],
    noise_std: float = 0.0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Build all splits: x from :func:`sample_inputs`, y = target(x) + noise_std · ξ.

    ``sizes`` and ``targets`` map each split name to its n and to its float64 teacher
    function (aux teacher for ``aux_*`` splits, main teacher for ``main_*`` splits).
    Returns split -> (x float32 (n, d), y float32 (n,)).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        n = int(sizes[split])
        x = sample_inputs(seed, split, n, d)
        y = np.asarray(targets[split](x), dtype=np.float64).reshape(n)
        y = y + sample_noise(seed, split, n, noise_std)
        out[split] = (x.astype(np.float32), y.astype(np.float32))
    return out


def random_signs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return ``size`` i.i.d. uniform ±1 values (float64)."""
    return rng.choice(np.array([-1.0, 1.0]), size=size)


PosInt = Annotated[int, Field(ge=1)]


class TeacherStudentParams(BaseModel):
    """Fields every teacher–student family shares: sample sizes and label noise.

    A family's parameter model subclasses this and adds its teacher's parameters; unknown keys
    are errors (``extra="forbid"``).
    """

    model_config = ConfigDict(extra="forbid")

    n_aux: PosInt
    n_main: PosInt
    n_test: PosInt = 10000
    noise_std: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
