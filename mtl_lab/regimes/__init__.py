"""Regimes are training recipes over the same models and engine (SCIENCE.md §1).

What each regime is (label, heads, what it trains, whether it starts pretrained) is
:data:`mtl_lab.regime_specs.REGIME_SPECS`; here is only how each one trains, keyed by the same
names.
"""

from collections.abc import Callable, Sequence

from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.regimes.base import GroupContext, Member, MemberResult, build_network, fit
from mtl_lab.regimes.gradient import train_mtl, train_ptft, train_ptlp, train_stl
from mtl_lab.regimes.pretrain import PretrainStore, pretrain_key, pretrained_for
from mtl_lab.regimes.ridge import kernel_ridge_loo, train_lp_ridge, train_ntk_ridge

RegimeFn = Callable[[Sequence[Member], GroupContext], list[MemberResult]]

REGIME_FUNCTIONS: dict[str, RegimeFn] = {
    "stl": train_stl,
    "mtl": train_mtl,
    "ptft": train_ptft,
    "ptlp": train_ptlp,
    "lp_ridge": train_lp_ridge,
    "ntk_ridge": train_ntk_ridge,
}
if list(REGIME_FUNCTIONS) != list(REGIME_SPECS):
    raise TypeError(f"REGIME_FUNCTIONS must train exactly the regimes of REGIME_SPECS, in its "
                    f"order: {list(REGIME_SPECS)} (has {list(REGIME_FUNCTIONS)})")

__all__ = [
    "REGIME_FUNCTIONS",
    "GroupContext",
    "Member",
    "MemberResult",
    "PretrainStore",
    "build_network",
    "fit",
    "kernel_ridge_loo",
    "pretrain_key",
    "pretrained_for",
]
