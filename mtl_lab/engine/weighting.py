"""Multi-task loss weightings as plug-ins: how the per-task losses of a batch update the network.

A multi-task module has a shared trunk and one head per task; each batch yields, for every task t
present in it, L_t (the MEAN loss of task t over its n_t samples in the batch). A
:class:`Weighting` turns these into the update of the network. Two families:

* **loss weightings** combine the losses into one scalar objective Σ_t w_t L_t (+ terms of their
  own) and let autograd do the rest: ``per_sample`` (the paper's: the mean over the concatenated
  samples, w_t = n_t / Σ_s n_s), ``equal`` (w_t = 1/T' over the T' tasks present), ``fixed``
  (user-given w_t) and ``uncertainty`` (Kendall et al. 2018: w_t learned through log-variances);
* **gradient weightings** (``manual_backward = True``) need each task's own gradient on the
  shared parameters and combine the gradients, not the losses: ``pcgrad`` (Yu et al. 2020)
  projects away the conflicting components. A module using one calls
  :meth:`Weighting.backward` itself (manual optimisation) instead of ``objective.backward()``.

Each weighting is registered under a name in :data:`WEIGHTINGS` and built with
:func:`make_weighting`. Register your own in a few lines:

    >>> import torch
    >>> @register_weighting("boost_main")
    ... class BoostMain(Weighting):
    ...     '''Σ_t L_t, with the task ``main`` counted ``boost`` times.'''
    ...     def __init__(self, tasks, *, boost: float = 2.0):
    ...         super().__init__(tasks)
    ...         self.boost = float(boost)
    ...     def forward(self, losses, counts):
    ...         tasks = self.present(losses, counts)
    ...         self.record({t: self.boost if t == "main" else 1.0 for t in tasks})
    ...         return sum(self.weights()[t] * losses[t] for t in tasks)
    >>> weighting = make_weighting("boost_main", ["aux", "main"], boost=3.0)
    >>> weighting({"aux": torch.tensor(1.0), "main": torch.tensor(0.5)}, {"aux": 8, "main": 2})
    tensor(2.5000)
    >>> weighting.weights()
    {'aux': 1.0, 'main': 3.0}
    >>> make_weighting("boost_main", ["aux", "main"], boots=3.0)
    Traceback (most recent call last):
    ...
    ValueError: weighting 'boost_main' got unknown option(s) ['boots']; its options: ['boost']
    >>> del WEIGHTINGS["boost_main"]        # (keeps the registry as it was)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "WEIGHTINGS",
    "EqualWeighting",
    "FixedWeighting",
    "PCGrad",
    "PerSampleWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "make_weighting",
    "register_weighting",
]


class Weighting(nn.Module):
    """Turns per-task losses of a batch into the update of a shared-trunk network.

    Subclasses implement :meth:`forward` (and, for gradient methods, :meth:`backward` with
    ``manual_backward = True``), take their options as keyword-only arguments of ``__init__`` and
    call :meth:`record` with the coefficients they used so that :meth:`weights` can report them.

    Args:
        tasks: the task names, distinct, in a fixed order.
        **options: none for the base class; an unknown one is a ``ValueError``.
    """

    name: ClassVar[str] = "weighting"
    manual_backward: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__  # until register_weighting gives it its registry name

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__()
        if options:
            raise ValueError(f"weighting {self.name!r} got unknown option(s) {sorted(options)}; "
                             f"its options: {_option_names(type(self))}")
        if isinstance(tasks, str) or not isinstance(tasks, Sequence):
            raise ValueError(f"tasks must be a sequence of task names, got {tasks!r}")
        tasks = tuple(tasks)
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"tasks must be one or more non-empty names, got {list(tasks)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names must be distinct, got {list(tasks)}")
        self.tasks: tuple[str, ...] = tasks
        self._weights: dict[str, float] = {}

    # ----------------------------------------------------------------------- helpers

    def present(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> list[str]:
        """The tasks of a batch in the order of :attr:`tasks`, after checking the two mappings:
        the same tasks, all known, at least one, scalar losses and positive counts."""
        if set(losses) != set(counts):
            raise ValueError(f"losses and counts name different tasks: {sorted(losses)} vs "
                             f"{sorted(counts)}")
        if not losses:
            raise ValueError("a batch must hold at least one task (losses is empty)")
        unknown = sorted(set(losses) - set(self.tasks))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks: {list(self.tasks)}")
        for task in losses:
            if not isinstance(losses[task], Tensor) or losses[task].numel() != 1:
                raise ValueError(f"losses[{task!r}] must be a scalar tensor (the task's mean "
                                 f"loss), got {losses[task]!r}")
            if int(counts[task]) < 1:
                raise ValueError(f"counts[{task!r}] must be a positive sample count, got "
                                 f"{counts[task]!r} (leave absent tasks out of both mappings)")
        return [t for t in self.tasks if t in losses]

    def record(self, weights: Mapping[str, float]) -> None:
        """Remember the per-task coefficients of the latest objective (see :meth:`weights`)."""
        self._weights = {t: float(w) for t, w in weights.items()}

    # ----------------------------------------------------------------------- interface

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        """The scalar objective for a batch: ``losses[t]`` is task t's MEAN loss over its samples
        in the batch, ``counts[t]`` how many samples of task t the batch holds (tasks absent from
        the batch are absent from both mappings)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int],
                 shared: Sequence[nn.Parameter]) -> Tensor:
        """Compute and ACCUMULATE gradients into ``.grad`` of every parameter involved (the shared
        trunk's, listed in ``shared``, and the task-specific ones); return the detached objective
        for logging. Here: ``objective = self(losses, counts); objective.backward()``."""
        objective = self(losses, counts)
        if objective.requires_grad:
            objective.backward()
        return objective.detach()

    def task_weights(self, counts: Mapping[str, Any]) -> dict[str, Any] | None:
        """w_t from the sample counts alone, for a weighting whose objective is Σ_t w_t L_t with
        w_t fixed by the counts (``per_sample``, ``equal``, ``fixed``): the batched engine turns
        it into a per-sample coefficient w_t / n_t of every member (counts may be (K,) tensors).
        None for weightings that learn or look at gradients (the Lightning modules run them)."""
        return None

    @classmethod
    def static(cls) -> bool:
        """Whether the objective's weights depend only on the sample counts (see
        :meth:`task_weights`): such a weighting runs in the batched engine too."""
        return cls.task_weights is not Weighting.task_weights

    def weights(self) -> dict[str, float]:
        """The current effective per-task weights, for logging: the coefficient w_t of L_t in the
        latest objective (tasks absent from that batch left out; for weightings whose weights do
        not depend on the batch, every task, even before the first batch)."""
        return dict(self._weights)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, tasks={list(self.tasks)}"


W = TypeVar("W", bound=type[Weighting])

#: Registered weightings by name (see :func:`register_weighting`).
WEIGHTINGS: dict[str, type[Weighting]] = {}


def register_weighting(name: str) -> Callable[[W], W]:
    """Class decorator: register a :class:`Weighting` subclass under ``name`` (its ``name``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a weighting name must be a non-empty string, got {name!r}")

    def decorate(cls: W) -> W:
        if not (isinstance(cls, type) and issubclass(cls, Weighting)):
            raise TypeError(f"register_weighting({name!r}) decorates Weighting subclasses, "
                            f"got {cls!r}")
        if name in WEIGHTINGS and WEIGHTINGS[name] is not cls:
            raise ValueError(f"a weighting named {name!r} is already registered "
                             f"({WEIGHTINGS[name].__qualname__}); pick another name")
        cls.name = name
        WEIGHTINGS[name] = cls
        return cls

    return decorate


def _option_names(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_weighting(name: str, tasks: Sequence[str], **options: Any) -> Weighting:
    """Build the weighting registered as ``name`` for ``tasks`` with its ``options``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones), an unknown option or
            an invalid option value.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; registered weightings: "
                         f"{', '.join(sorted(WEIGHTINGS))}")
    cls = WEIGHTINGS[name]
    params = inspect.signature(cls.__init__).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                         inspect.Parameter.POSITIONAL_OR_KEYWORD)}
        unknown = sorted(set(options) - accepted - {"self", "tasks"})
        if unknown:
            raise ValueError(f"weighting {name!r} got unknown option(s) {unknown}; its options: "
                             f"{_option_names(cls)}")
    return cls(tasks, **options)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def _choice(value: Any, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def _per_sample(tasks: Sequence[str], counts: Mapping[str, Any]) -> dict[str, Any]:
    """w_t = n_t / Σ_s n_s (counts are numbers, or (K,) tensors of per-member counts)."""
    total = sum(counts[t] for t in tasks)
    return {t: counts[t] / total for t in tasks}


def _weighted_sum(weights: Mapping[str, float], losses: Mapping[str, Tensor]) -> Tensor:
    return torch.stack([weights[t] * losses[t].reshape(()) for t in weights]).sum()


# --------------------------------------------------------------------------- loss weightings


@register_weighting("per_sample")
class PerSampleWeighting(Weighting):
    """The paper's MTL weighting: the mean loss over the concatenated samples of all tasks,

        objective = Σ_t n_t L_t / Σ_t n_t,

    so each task weighs by its sample count n_t in the batch (w_t = n_t / Σ_s n_s).
    """

    def task_weights(self, counts: Mapping[str, Any]) -> dict[str, Any]:
        return _per_sample(list(counts), counts)

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        self.present(losses, counts)
        weights = self.task_weights({t: int(counts[t]) for t in self.tasks if t in counts})
        self.record(weights)
        return _weighted_sum(weights, losses)


@register_weighting("equal")
class EqualWeighting(Weighting):
    """Every task present weighs the same, whatever its sample count:

        objective = (1/T') Σ_t L_t,   over the T' tasks present in the batch.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.record({t: 1.0 / len(self.tasks) for t in self.tasks})

    def task_weights(self, counts: Mapping[str, Any]) -> dict[str, float]:
        return {t: 1.0 / len(counts) for t in counts}

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        tasks = self.present(losses, counts)
        weights = self.task_weights({t: counts[t] for t in tasks})
        self.record(weights)
        return _weighted_sum(weights, losses)


@register_weighting("fixed")
class FixedWeighting(Weighting):
    """User-given weights, one per task:

        objective = Σ_t w_t L_t   (over the tasks present; the w_t are not renormalised).

    Options:
        weights: ``{task: w_t}`` with w_t > 0, exactly one per task.
    """

    def __init__(self, tasks: Sequence[str], *, weights: Mapping[str, float] | None = None
                 ) -> None:
        super().__init__(tasks)
        if not isinstance(weights, Mapping):
            raise ValueError(f"weighting 'fixed' needs the option weights: a mapping with one "
                             f"positive weight per task {list(self.tasks)}, got {weights!r}")
        missing = [t for t in self.tasks if t not in weights]
        if missing:
            raise ValueError(f"weighting 'fixed' lacks a weight for task(s) {missing}; "
                             f"tasks: {list(self.tasks)}")
        unknown = sorted(str(t) for t in weights if t not in self.tasks)
        if unknown:
            raise ValueError(f"weighting 'fixed' got weights for unknown task(s) {unknown}; "
                             f"tasks: {list(self.tasks)}")
        fixed = {t: _number(weights[t], f"fixed weight of task {t!r}") for t in self.tasks}
        bad = [t for t, w in fixed.items() if w <= 0]
        if bad:
            raise ValueError(f"fixed weights must be positive; task(s) {bad} have "
                             f"{[fixed[t] for t in bad]}")
        self.fixed = fixed
        self.record(fixed)

    def task_weights(self, counts: Mapping[str, Any]) -> dict[str, float]:
        return {t: self.fixed[t] for t in counts}

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        tasks = self.present(losses, counts)
        return _weighted_sum(self.task_weights({t: counts[t] for t in tasks}), losses)


@register_weighting("uncertainty")
class UncertaintyWeighting(Weighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) with one learned
    log-variance s_t = log σ_t² per task (an ``nn.Parameter``, trained by the module's optimiser):

    * ``form="regression"`` (default; a Gaussian likelihood, the paper's regression form):
      objective = Σ_t ½ exp(−s_t) L_t + ½ s_t,   weights w_t = ½ exp(−s_t);
      for fixed L_t the optimum is s_t = log L_t (d/ds: −½ e^{−s} L + ½ = 0);
    * ``form="classification"`` (the form commonly used with cross-entropy, a softmax with
      temperature σ_t²): objective = Σ_t exp(−s_t) L_t + ½ s_t,   w_t = exp(−s_t);
      optimum s_t = log 2L_t.

    Sums run over the tasks present in the batch. The objective can be negative (½ s_t < 0 when
    L_t < 1). Weight decay on s_t pulls it towards 0, i.e. towards w_t = ½ (or 1).

    Options:
        form: ``"regression"`` or ``"classification"``.
        init: the initial s_t for every task (0: σ_t = 1).
    """

    FORMS: ClassVar[dict[str, float]] = {"regression": 0.5, "classification": 1.0}

    def __init__(self, tasks: Sequence[str], *, form: str = "regression",
                 init: float = 0.0) -> None:
        super().__init__(tasks)
        self.form = _choice(form, list(self.FORMS), "uncertainty option form")
        self.scale = self.FORMS[self.form]
        init = _number(init, "uncertainty option init")
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), init))
        self.index = {t: i for i, t in enumerate(self.tasks)}

    def log_variances(self) -> dict[str, float]:
        """The learned s_t per task."""
        s = self.log_vars.detach()
        return {t: float(s[i]) for t, i in self.index.items()}

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        tasks = self.present(losses, counts)
        s = self.log_vars[[self.index[t] for t in tasks]]
        stacked = torch.stack([losses[t].reshape(()) for t in tasks]).to(s.dtype)
        return (self.scale * torch.exp(-s) * stacked + 0.5 * s).sum()

    def weights(self) -> dict[str, float]:
        """w_t = ½ exp(−s_t) (regression form) or exp(−s_t) (classification), every task."""
        with torch.no_grad():
            w = self.scale * torch.exp(-self.log_vars)
        return {t: float(w[i]) for t, i in self.index.items()}


# --------------------------------------------------------------------------- gradient weightings


@register_weighting("pcgrad")
class PCGrad(Weighting):
    """Projecting conflicting gradients (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task
    Learning"); ``manual_backward = True``.

    On the SHARED parameters θ (those passed to :meth:`backward`), with g_t = w_t ∇_θ L_t the
    task's gradient scaled by its base weight w_t: for each task t, visiting the other tasks j in
    a random order (a seeded ``torch.Generator``), if g_t·g_j < 0,

        g_t ← g_t − (g_t·g_j) / ‖g_j‖² g_j     (g_j the ORIGINAL gradient of task j),

    and the shared gradient is Σ_t g_t (projected). Every other parameter that receives gradient
    (the heads, task-specific parts) gets its plain gradient of the base objective Σ_t w_t L_t.
    Gradients are ACCUMULATED into ``.grad``. The projection is invariant to positive scalings:
    projecting w_t ∇L_t onto w_j ∇L_j gives w_t × (∇L_t projected onto ∇L_j), so the base weights
    scale each task's projected gradient; without conflicts the update is exactly that of the
    base objective.

    :meth:`forward` returns the base objective (for validation and logging); :meth:`weights` the
    base weights of the latest batch.

    Options:
        base: the base weights w_t — ``"per_sample"`` (default, the paper's MTL weighting,
            w_t = n_t / Σ_s n_s), ``"equal"`` (w_t = 1/T' over the T' tasks present) or ``"sum"``
            (w_t = 1, the unnormalised sum of Yu et al.).
        seed: seed of the generator of the visiting orders (the same seed, the same orders).
    """

    manual_backward: ClassVar[bool] = True
    BASES: ClassVar[tuple[str, ...]] = ("per_sample", "equal", "sum")

    def __init__(self, tasks: Sequence[str], *, base: str = "per_sample", seed: int = 0) -> None:
        super().__init__(tasks)
        self.base = _choice(base, self.BASES, "pcgrad option base")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"pcgrad option seed must be an integer, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def base_weights(self, losses: Mapping[str, Tensor],
                     counts: Mapping[str, int]) -> dict[str, float]:
        tasks = self.present(losses, counts)
        if self.base == "per_sample":
            return _per_sample(tasks, counts)
        return {t: 1.0 / len(tasks) if self.base == "equal" else 1.0 for t in tasks}

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> Tensor:
        weights = self.base_weights(losses, counts)
        self.record(weights)
        return _weighted_sum(weights, losses)

    def project(self, grads: Tensor) -> Tensor:
        """The sum over tasks of the projected rows of ``grads`` (T', P): gradient surgery."""
        total = torch.zeros_like(grads[0])
        for t in range(grads.shape[0]):
            g = grads[t].clone()
            others = [j for j in range(grads.shape[0]) if j != t]
            for k in torch.randperm(len(others), generator=self.generator).tolist():
                g_j = grads[others[k]]
                dot = torch.dot(g, g_j)
                if dot < 0:
                    g = g - dot / torch.dot(g_j, g_j) * g_j
            total += g
        return total

    def backward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int],
                 shared: Sequence[nn.Parameter]) -> Tensor:
        objective = self(losses, counts)
        weights = self.weights()
        params: list[nn.Parameter] = []
        for p in shared:
            if p.requires_grad and all(p is not q for q in params):
                params.append(p)
        used = [False] * len(params)
        rows = []
        for task, w in weights.items():
            loss = losses[task].reshape(())
            grads: Sequence[Tensor | None] = [None] * len(params)
            if loss.requires_grad and params:
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            used = [u or g is not None for u, g in zip(used, grads)]
            rows.append(torch.cat([(w * g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]) if params else None)
        before = [None if p.grad is None else p.grad.detach().clone() for p in params]
        # The plain backward of the base objective fills every task-specific parameter; the shared
        # parameters' part of it is then replaced by the surgery's result.
        if objective.requires_grad:
            objective.backward()
        if params:
            surgery = self.project(torch.stack(rows))
            offset = 0
            for p, prior, u in zip(params, before, used):
                piece = surgery[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if not u:
                    p.grad = prior
                    continue
                p.grad = piece.to(p.dtype).clone() if prior is None else prior + piece
        return objective.detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base!r}, seed={self.seed}"
