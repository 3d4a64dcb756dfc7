"""One meaning per regime: the registry is what the config, training and tables read."""

import dataclasses
import typing

import pytest

from mtl_lab.config import (
    MEMBER_KNOBS,
    ComparisonConfig,
    ConfigError,
    member_knobs,
    validate_config,
)
from mtl_lab.regime_specs import REGIME_SPECS, labels_in_order, spec_of
from mtl_lab.regimes import REGIME_FUNCTIONS, Member
from mtl_lab.sweeps.plan import group_key, runs_of
from mtl_lab.tables import FINETUNE_LABELS
from tests.conftest import tiny_raw


def test_config_and_training_cover_exactly_the_registry():
    (regime,) = typing.get_args(ComparisonConfig.model_fields["regimes"].annotation)
    assert typing.get_args(regime) == tuple(REGIME_SPECS)
    assert list(REGIME_FUNCTIONS) == list(REGIME_SPECS)


def test_unknown_regime_lists_every_choice():
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_raw(regimes=["stl", "magic"]), "c.yaml")
    assert "regimes.1" in str(err.value)
    assert all(f"'{name}'" in str(err.value) for name in REGIME_SPECS)


def test_specs_are_consistent():
    for spec in REGIME_SPECS.values():
        assert spec_of(spec.name) is spec_of(spec.label) is spec
        assert set(spec.fresh_heads) <= set(spec.heads)
        assert spec.kernel_reference == (spec.trains == "closed_form")
        assert not spec.finetunes or spec.pretrained
        assert spec.reference in (None, "pretrained", *REGIME_SPECS)
    assert FINETUNE_LABELS == ("PT+FT", "PT+LP")
    assert labels_in_order(["zeta", "MTL", "STL"]) == ["STL", "MTL", "zeta"]


def test_member_knobs_are_member_fields_and_vary_within_a_group():
    fields = [f.name for f in dataclasses.fields(Member)]
    assert fields[3:] == list(MEMBER_KNOBS.values())
    base = validate_config(tiny_raw(regimes=["ptft"], n_main=[8]))
    assert member_knobs(base) == {"lr": 0.05, "rescale": 1.0, "head_init_scale": 1e-3}
    keys = set()
    for path in MEMBER_KNOBS:
        other = validate_config(tiny_raw(**{"regimes": ["ptft"], "n_main": [8], path: 0.5}))
        assert runs_of(other)[0].run_id != runs_of(base)[0].run_id  # a different run …
        keys.add(group_key(runs_of(other)[0]))  # … in the same batched group
    assert keys == {group_key(runs_of(base)[0])}
    wider = validate_config(tiny_raw(**{"regimes": ["ptft"], "n_main": [8], "model.width": 8}))
    assert group_key(runs_of(wider)[0]) not in keys
