"""The networks a comparison config trains, as the symmetry tools see them (SCIENCE.md §6).

Each fit of a comparison trains a trunk and some heads by gradient flow: STL the trunk and the
main head, MTL the trunk and both heads, PT+FT a pretraining fit (trunk + auxiliary head) and then
the finetuning fit (trunk + the fresh main head; the auxiliary head is not in the loss). Its
conservation laws are those of that network, so :func:`fits_of` turns a config into one
:class:`Fit` per fit (the pretraining once, however many pretrained regimes share it):

* ``model.kind: relu`` — the MLP ``d-width^depth:1,…,1`` (one output per trained head; biases
  as ``model.bias``; heads without bias), counted by :func:`~mtl_lab.symmetry.laws.count_laws`
  directly.
* ``model.kind: diagonal`` — β^t = w₊∘v₊^t − w₋∘v₋^t is 2d disjoint scalar chains
  w → (v^t)_t: each chain's parameters enter only its own lifting coordinates w·v^t, so the Lie
  algebra is a direct sum and the counts add: 2d × the count of one chain, the linear network
  ``1-1:1,…,1`` (one law each, w² − Σ_t (v^t)²).
* ``resnet``, ``vit`` — refused: convolutions, normalisation, skip connections and GELU are
  outside the Linear + ReLU family whose rescaling symmetry and path-lifting §6 states (and
  ResNet-18's 11 million parameters are far beyond the exact count's size limit anyway).

Fits whose main fit trains only a head (PT+LP) or nothing (the ridge references) have no trunk
dynamics to count and are listed with that reason.

Example:
    >>> from mtl_lab.config import ComparisonConfig
    >>> cfg = ComparisonConfig(regimes=["stl", "mtl"], seeds=[0], n_main=[8],
    ...                        task={"family": "relu_units", "params": {"d": 4}},
    ...                        model={"width": 3})
    >>> [(fit.label, str(fit.arch)) for fit in fits_of(cfg)]
    [('STL', '4-3:1'), ('MTL', '4-3:1,1')]
"""

from __future__ import annotations

from dataclasses import dataclass

from mtl_lab.config import ComparisonConfig
from mtl_lab.errors import InputError
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.symmetry.mlp import Architecture, NotAnMLP

__all__ = ["Fit", "fits_of"]


@dataclass(frozen=True)
class Fit:
    """One fit of a comparison: ``arch`` is counted ``blocks`` times (the diagonal network's
    2d chains; 1 for an MLP); ``arch`` is None when there is nothing to count (``reason``)."""

    label: str
    arch: Architecture | None
    blocks: int = 1
    reason: str = ""


def _input_size(cfg: ComparisonConfig) -> int:
    d = cfg.task.params.get("d")
    if not isinstance(d, int):
        raise InputError(f"task family {cfg.task.family!r}: no integer input size task.params.d "
                         "to build the network from; give the architecture as IN-H1-…:K instead")
    return d


def fits_of(cfg: ComparisonConfig) -> list[Fit]:
    """The fits of ``cfg`` (module docstring), in the order of ``cfg.regimes``, a pretraining
    fit before the first pretrained regime. Raises :class:`NotAnMLP` for deep trunks."""
    kind = cfg.model.kind
    if kind not in ("relu", "diagonal"):
        raise NotAnMLP(f"model.kind {kind!r}: conservation laws are counted for ReLU MLP and "
                       "diagonal trunks only (convolutions, normalisation, skip connections and "
                       "other activations are outside the family of SCIENCE.md §6)")
    d = _input_size(cfg)

    def network(heads: int) -> tuple[Architecture, int]:
        if kind == "diagonal":
            return Architecture(1, (1,), heads=(1,) * heads, activation="linear"), 2 * d
        return Architecture(d, (cfg.model.width,) * cfg.model.depth, heads=(1,) * heads,
                            bias=cfg.model.bias), 1

    fits: list[Fit] = []
    for regime in cfg.regimes:
        spec = REGIME_SPECS[regime]
        if spec.pretrained and not any(f.label == "pretraining" for f in fits):
            fits.append(Fit("pretraining", *network(1)))
        if spec.trains != "all":
            what = "only its head" if spec.trains == "head" else "nothing by gradient (closed form)"
            fits.append(Fit(spec.label, None, reason=f"trains {what}: no trunk dynamics"))
            continue
        fits.append(Fit(spec.label, *network(len(spec.tasks))))
    return fits
