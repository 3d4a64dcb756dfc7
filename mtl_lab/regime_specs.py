"""What each regime is, in one place (SCIENCE.md §1): the config, the engine path, the analysis,
the tables, the figures and the CLI all read :data:`REGIME_SPECS`.

A regime's ``name`` is its config key and the ``regime`` column of a results table; its
``label`` the ``regime_label`` column and the name in tables and legends. This module imports
nothing heavy (no torch, no pydantic), so that validating a config stays fast; the training
function of each regime lives in :data:`mtl_lab.regimes.REGIME_FUNCTIONS`, keyed by these names.

Example:
    >>> spec = REGIME_SPECS["ptft"]
    >>> spec.label, spec.trains, spec.pretrained, spec.finetunes, spec.kernel_reference
    ('PT+FT', 'all', True, True, False)
    >>> [s.name for s in REGIME_SPECS.values() if s.kernel_reference]
    ['lp_ridge', 'ntk_ridge']
    >>> spec_of("PT+LP").name, spec_of("mtl").label
    ('ptlp', 'MTL')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Trains = Literal["all", "head", "closed_form"]
Kernel = Literal["trunk", "gradient"]


@dataclass(frozen=True)
class RegimeSpec:
    """One regime.

    * ``tasks``: the tasks whose training data the main fit uses (its loss terms);
    * ``heads``: the heads of the network a run keeps (its checkpoint); ``fresh_heads``: the
      heads that start from a fresh initialisation in the main fit (for a pretrained regime, the
      new main head of scale γ; the pretrained 'aux' head is kept);
    * ``trains``: what the main fit updates — ``all`` (trunk and fresh heads; PT+FT follows
      ``finetune.train``), ``head`` (the fresh heads only, a linear probe) or ``closed_form``
      (kernel ridge, no gradient steps);
    * ``pretrained``: starts from the network pretrained on the auxiliary task (one shared
      checkpoint per seed);
    * ``finetunes``: the finetuning knobs apply — trunk × c (``finetune.rescale``) and a fresh
      head of scale γ (``finetune.head_init_scale``) — so tables keep their values apart;
    * ``kernel``: for a kernel reference, the features its ridge regression uses — ``trunk``
      (h(x), LP ridge) or ``gradient`` (∇_θ f_aux(x), NTK ridge); None for trained regimes;
    * ``reference``: what the analysis compares its representation with — ``pretrained``, the
      name of another regime (its run of the same seed and n_main) or None.
    """

    name: str
    label: str
    colour: str
    tasks: tuple[str, ...]
    heads: tuple[str, ...]
    fresh_heads: tuple[str, ...]
    trains: Trains
    pretrained: bool = False
    finetunes: bool = False
    kernel: Kernel | None = None
    reference: str | None = None

    @property
    def kernel_reference(self) -> bool:
        """A closed-form kernel regression on frozen pretrained features (lazy by construction)."""
        return self.kernel is not None

    @property
    def sees_aux(self) -> bool:
        """Whether anything of the auxiliary task reaches this regime (else reuse is 0)."""
        return self.pretrained or "aux" in self.tasks


REGIME_SPECS: dict[str, RegimeSpec] = {s.name: s for s in (  # canonical order
    RegimeSpec("stl", "STL", "#4d4d4d", tasks=("main",), heads=("main",),
               fresh_heads=("main",), trains="all"),
    RegimeSpec("mtl", "MTL", "#1f77b4", tasks=("aux", "main"), heads=("aux", "main"),
               fresh_heads=("aux", "main"), trains="all", reference="stl"),
    RegimeSpec("ptft", "PT+FT", "#d62728", tasks=("main",), heads=("aux", "main"),
               fresh_heads=("main",), trains="all", pretrained=True, finetunes=True,
               reference="pretrained"),
    RegimeSpec("ptlp", "PT+LP", "#ff7f0e", tasks=("main",), heads=("aux", "main"),
               fresh_heads=("main",), trains="head", pretrained=True, finetunes=True,
               reference="pretrained"),
    RegimeSpec("lp_ridge", "LP ridge", "#9467bd", tasks=("main",), heads=("aux",),
               fresh_heads=(), trains="closed_form", pretrained=True, kernel="trunk",
               reference="pretrained"),
    RegimeSpec("ntk_ridge", "NTK ridge", "#2ca02c", tasks=("main",), heads=("aux",),
               fresh_heads=(), trains="closed_form", pretrained=True, kernel="gradient",
               reference="pretrained"),
)}
REGIME_NAMES: tuple[str, ...] = tuple(REGIME_SPECS)
BY_LABEL: dict[str, RegimeSpec] = {s.label: s for s in REGIME_SPECS.values()}
OTHER_COLOUR = "#8c564b"  # a regime label the registry does not know


def spec_of(regime: str) -> RegimeSpec | None:
    """The spec of a regime given by name ("ptft") or label ("PT+FT"); None if unknown."""
    return REGIME_SPECS.get(regime) or BY_LABEL.get(regime)


def label_of(regime: str) -> str:
    """The label of a regime name or label; an unknown string is returned as it is."""
    spec = spec_of(regime)
    return spec.label if spec is not None else regime


def colour_of(regime: str) -> str:
    """The figure colour of a regime name or label (a neutral one for an unknown regime)."""
    spec = spec_of(regime)
    return spec.colour if spec is not None else OTHER_COLOUR


def labels_in_order(labels) -> list[str]:
    """The given regime labels in the registry's order, unknown ones last (sorted)."""
    present = set(labels)
    known = [s.label for s in REGIME_SPECS.values() if s.label in present]
    return known + sorted(present - set(known))


def labels_where(**wanted) -> tuple[str, ...]:
    """Labels of the regimes whose spec attributes equal ``wanted`` (``finetunes=True``)."""
    return tuple(s.label for s in REGIME_SPECS.values()
                 if all(getattr(s, key) == value for key, value in wanted.items()))


def names_where(**wanted) -> tuple[str, ...]:
    """Names of the regimes whose spec attributes equal ``wanted`` (``pretrained=True``)."""
    return tuple(BY_LABEL[label].name for label in labels_where(**wanted))
