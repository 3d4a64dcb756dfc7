"""Tests for the ``tasks`` package: registry, caching, and the two built-in families."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pydantic
import pytest

import tasks

SPARSE = dict(d=40, k_aux=12, k_main=8, overlap=5, n_aux=64, n_main=32, n_test=200)
RELU = dict(
    d=15,
    m_aux=6,
    m_main=4,
    correlation=[0.0, 0.3, 0.8, 1.0],
    magnitude=[1.0, 2.0, 0.5, 1.5],
    n_aux=64,
    n_main=32,
    n_test=200,
)


def arrays(dd, split):
    """Return (x, y) numpy arrays of one split of a built task."""
    batch = dd[split][:]
    return batch["x"].numpy(), batch["y"].numpy()


def sparse(**overrides):
    params = dict(SPARSE)
    params.update(overrides)
    return params


def relu(**overrides):
    params = dict(RELU)
    params.update(overrides)
    return params


# ---------------------------------------------------------------- registry / structure


def test_builtin_families_registered():
    assert {"sparse_linear", "relu_units"} <= set(tasks.list_families())
    fam = tasks.get_family("sparse_linear")
    assert fam.name == "sparse_linear" and fam.version >= 1


def test_unknown_family_lists_known():
    with pytest.raises(KeyError) as info:
        tasks.get_family("no_such_family")
    msg = str(info.value)
    assert "no_such_family" in msg
    for name in ("sparse_linear", "relu_units"):
        assert name in msg


def test_duplicate_registration_raises():
    def other_generate(params, seed):  # pragma: no cover - never called
        raise AssertionError

    fam = tasks.get_family("sparse_linear")
    with pytest.raises(ValueError, match="sparse_linear"):
        tasks.register_family("sparse_linear", fam.params_model, fam.teacher)(other_generate)


def test_splits_columns_and_dtypes(tmp_path):
    params = sparse()
    dd = tasks.build_task("sparse_linear", params, seed=1, cache_dir=tmp_path)
    assert list(dd.keys()) == ["aux_train", "main_train", "aux_test", "main_test"]
    expected_n = {
        "aux_train": params["n_aux"],
        "main_train": params["n_main"],
        "aux_test": params["n_test"],
        "main_test": params["n_test"],
    }
    for split, n in expected_n.items():
        assert dd[split].column_names == ["x", "y"]
        x, y = arrays(dd, split)
        assert x.shape == (n, params["d"]) and y.shape == (n,)
        assert x.dtype == np.float32 and y.dtype == np.float32
        # ‖x‖² = d for every row
        np.testing.assert_allclose((x.astype(np.float64) ** 2).sum(1), params["d"], rtol=1e-5)


# ---------------------------------------------------------------- sparse_linear


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_linear_teacher_structure(seed):
    p = sparse()
    t = tasks.task_teacher("sparse_linear", p, seed)
    ba, bm = t["beta_aux"], t["beta_main"]
    assert ba.shape == bm.shape == (p["d"],)
    sa, sm = np.flatnonzero(ba), np.flatnonzero(bm)
    assert len(sa) == p["k_aux"] and len(sm) == p["k_main"]
    np.testing.assert_allclose(np.abs(ba[sa]), 1 / np.sqrt(p["k_aux"]))
    np.testing.assert_allclose(np.abs(bm[sm]), 1 / np.sqrt(p["k_main"]))
    shared = np.intersect1d(sa, sm)
    assert len(shared) == p["overlap"]
    np.testing.assert_array_equal(np.sign(ba[shared]), np.sign(bm[shared]))


def test_sparse_linear_nested_support_subset():
    p = sparse(overlap=None, nested=True)
    t = tasks.task_teacher("sparse_linear", p, 3)
    sa, sm = np.flatnonzero(t["beta_aux"]), np.flatnonzero(t["beta_main"])
    assert len(sm) == p["k_main"]
    assert set(sm) <= set(sa)
    np.testing.assert_array_equal(np.sign(t["beta_aux"][sm]), np.sign(t["beta_main"][sm]))


def test_sparse_linear_targets_equal_x_beta(tmp_path):
    p = sparse()
    dd = tasks.build_task("sparse_linear", p, seed=5, cache_dir=tmp_path)
    t = tasks.task_teacher("sparse_linear", p, 5)
    for split, beta in [
        ("aux_train", t["beta_aux"]),
        ("main_train", t["beta_main"]),
        ("aux_test", t["beta_aux"]),
        ("main_test", t["beta_main"]),
    ]:
        x, y = arrays(dd, split)
        np.testing.assert_allclose(y, x.astype(np.float64) @ beta, rtol=1e-4, atol=1e-5)


def test_noise_is_added_and_has_right_scale(tmp_path):
    clean = tasks.build_task("sparse_linear", sparse(n_test=4000), 0, cache_dir=tmp_path)
    noisy = tasks.build_task(
        "sparse_linear", sparse(n_test=4000, noise_std=0.5), 0, cache_dir=tmp_path
    )
    xc, yc = arrays(clean, "main_test")
    xn, yn = arrays(noisy, "main_test")
    np.testing.assert_array_equal(xc, xn)
    resid = (yn - yc).astype(np.float64)
    assert abs(resid.std() - 0.5) < 0.05


# ---------------------------------------------------------------- relu_units


def test_relu_units_teacher_geometry():
    p = relu()
    t = tasks.task_teacher("relu_units", p, 7)
    aux, main = t["aux_units"], t["main_units"]
    assert aux.shape == (p["m_aux"], p["d"]) and main.shape == (p["m_main"], p["d"])
    assert t["aux_readout"].shape == (p["m_aux"],)
    assert t["main_readout"].shape == (p["m_main"],)
    np.testing.assert_allclose(np.abs(t["aux_readout"]), 1 / np.sqrt(p["m_aux"]))
    np.testing.assert_allclose(np.abs(t["main_readout"]), 1 / np.sqrt(p["m_main"]))
    # aux units are orthonormal
    np.testing.assert_allclose(aux @ aux.T, np.eye(p["m_aux"]), atol=1e-10)
    norms = np.linalg.norm(main, axis=1)
    np.testing.assert_allclose(norms, p["magnitude"], rtol=1e-10)
    for i, rho in enumerate(p["correlation"]):
        cos = main[i] @ aux[i] / norms[i]
        assert abs(cos - rho) < 1e-6
        # the non-shared part of main unit i is orthogonal to every aux unit
        residual = main[i] / norms[i] - rho * aux[i]
        np.testing.assert_allclose(aux @ residual, 0.0, atol=1e-10)


def test_relu_units_haar_matrix_orthogonal():
    from tasks.relu_units import haar_orthogonal
    from tasks.sampling import teacher_rng

    q = haar_orthogonal(teacher_rng(0), 9)
    np.testing.assert_allclose(q @ q.T, np.eye(9), atol=1e-12)
    np.testing.assert_allclose(q.T @ q, np.eye(9), atol=1e-12)


def test_relu_units_scalar_broadcast_matches_list():
    a = tasks.validate_params("relu_units", relu(correlation=0.4, magnitude=2.0))
    b = tasks.validate_params("relu_units", relu(correlation=[0.4] * 4, magnitude=[2.0] * 4))
    assert a.model_dump() == b.model_dump()
    assert tasks.task_cache_key("relu_units", a, 0) == tasks.task_cache_key("relu_units", b, 0)


def test_relu_units_targets_match_formula(tmp_path):
    p = relu()
    dd = tasks.build_task("relu_units", p, seed=2, cache_dir=tmp_path)
    t = tasks.task_teacher("relu_units", p, 2)

    def f(x, units, readout):
        return np.maximum(x @ units.T, 0.0) @ readout

    for split, units, readout in [
        ("aux_train", t["aux_units"], t["aux_readout"]),
        ("main_train", t["main_units"], t["main_readout"]),
        ("aux_test", t["aux_units"], t["aux_readout"]),
        ("main_test", t["main_units"], t["main_readout"]),
    ]:
        x, y = arrays(dd, split)
        np.testing.assert_allclose(y, f(x.astype(np.float64), units, readout), atol=1e-4)


def test_relu_units_zero_correlation_allows_more_main_units():
    p = relu(m_aux=3, m_main=5, d=10, correlation=0.0, magnitude=1.0)
    t = tasks.task_teacher("relu_units", p, 0)
    np.testing.assert_allclose(t["main_units"] @ t["aux_units"].T, 0.0, atol=1e-10)


# ---------------------------------------------------------------- determinism / caching


def test_determinism_across_cache_dirs(tmp_path):
    a = tasks.build_task("relu_units", relu(), 11, cache_dir=tmp_path / "a")
    b = tasks.build_task("relu_units", relu(), 11, cache_dir=tmp_path / "b")
    for split in tasks.SPLITS:
        xa, ya = arrays(a, split)
        xb, yb = arrays(b, split)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    pa_ = tasks.task_cache_path("relu_units", relu(), 11, tmp_path / "a")
    pb_ = tasks.task_cache_path("relu_units", relu(), 11, tmp_path / "b")
    assert pa_.name == pb_.name
    files_a = sorted(pa_.rglob("*.arrow"))
    assert files_a
    for fa in files_a:
        fb = pb_ / fa.relative_to(pa_)
        assert hashlib.sha256(fa.read_bytes()).digest() == hashlib.sha256(fb.read_bytes()).digest()


def test_different_seed_gives_different_data(tmp_path):
    a = tasks.build_task("sparse_linear", sparse(), 0, cache_dir=tmp_path)
    b = tasks.build_task("sparse_linear", sparse(), 1, cache_dir=tmp_path)
    assert not np.array_equal(arrays(a, "aux_train")[0], arrays(b, "aux_train")[0])


def test_cache_hit_and_param_change(tmp_path):
    p1 = sparse(overlap=2)
    p2 = sparse(overlap=6)
    first = tasks.build_task("sparse_linear", p1, 0, cache_dir=tmp_path)
    path1 = tasks.task_cache_path("sparse_linear", p1, 0, tmp_path)
    assert path1.is_dir()
    mtime = (path1 / "dataset_dict.json").stat().st_mtime_ns
    again = tasks.build_task("sparse_linear", p1, 0, cache_dir=tmp_path)
    assert (path1 / "dataset_dict.json").stat().st_mtime_ns == mtime  # not rewritten
    for split in tasks.SPLITS:
        np.testing.assert_array_equal(arrays(first, split)[1], arrays(again, split)[1])

    other = tasks.build_task("sparse_linear", p2, 0, cache_dir=tmp_path)
    path2 = tasks.task_cache_path("sparse_linear", p2, 0, tmp_path)
    assert path2 != path1 and path2.is_dir()
    x1, y1 = arrays(first, "main_train")
    x2, y2 = arrays(other, "main_train")
    np.testing.assert_array_equal(x1, x2)  # inputs do not depend on the teacher
    assert not np.array_equal(y1, y2)


def test_inputs_independent_of_family_teacher(tmp_path):
    # same d, seed and n: sparse_linear and relu_units share inputs exactly
    s = tasks.build_task("sparse_linear", sparse(d=15, k_aux=5, k_main=5), 4, cache_dir=tmp_path)
    r = tasks.build_task("relu_units", relu(), 4, cache_dir=tmp_path)
    for split in tasks.SPLITS:
        np.testing.assert_array_equal(arrays(s, split)[0], arrays(r, split)[0])


def test_prefix_property(tmp_path):
    small = tasks.build_task("sparse_linear", sparse(n_main=16), 3, cache_dir=tmp_path)
    large = tasks.build_task("sparse_linear", sparse(n_main=64), 3, cache_dir=tmp_path)
    xs, ys = arrays(small, "main_train")
    xl, yl = arrays(large, "main_train")
    np.testing.assert_array_equal(xs, xl[:16])
    np.testing.assert_array_equal(ys, yl[:16])


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(tasks.CACHE_ENV_VAR, str(tmp_path / "envcache"))
    assert tasks.default_cache_dir() == tmp_path / "envcache"
    tasks.build_task("sparse_linear", sparse(n_test=10), 0)
    assert tasks.task_cache_path("sparse_linear", sparse(n_test=10), 0).is_dir()
    assert tasks.task_cache_path("sparse_linear", sparse(n_test=10), 0).parent == (
        tmp_path / "envcache"
    )


@pytest.mark.parametrize("damage", ["truncate_arrow", "delete_state", "garbage_dir"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    p = sparse()
    good = tasks.build_task("sparse_linear", p, 9, cache_dir=tmp_path)
    x_ref, y_ref = arrays(good, "aux_train")
    del good
    path = tasks.task_cache_path("sparse_linear", p, 9, tmp_path)
    if damage == "truncate_arrow":
        arrow = next((path / "aux_train").glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:100])
    elif damage == "delete_state":
        (path / "main_test" / "state.json").unlink()
    else:
        import shutil

        shutil.rmtree(path)
        path.mkdir()
        (path / "junk.txt").write_text("partial write")
    rebuilt = tasks.build_task("sparse_linear", p, 9, cache_dir=tmp_path)
    x, y = arrays(rebuilt, "aux_train")
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------- parameter validation


@pytest.mark.parametrize(
    ("family", "params", "field"),
    [
        ("sparse_linear", sparse(bogus=1), "bogus"),
        ("sparse_linear", sparse(d="many"), "d"),
        ("sparse_linear", sparse(k_main=4, overlap=6), "k_main"),
        ("sparse_linear", sparse(k_aux=4, k_main=8, overlap=6), "k_aux"),
        ("sparse_linear", sparse(d=10, k_aux=12, k_main=2, overlap=1), "k_aux"),
        ("sparse_linear", sparse(d=14, k_aux=10, k_main=8, overlap=2), "d"),
        ("sparse_linear", sparse(overlap=None, nested=True, k_main=14), "k_main"),
        ("sparse_linear", sparse(overlap=2, nested=True), "nested"),
        ("sparse_linear", sparse(overlap=None), "overlap"),
        ("sparse_linear", sparse(n_main=-3), "n_main"),
        ("sparse_linear", sparse(noise_std=-0.1), "noise_std"),
        ("relu_units", relu(n_aux=-1), "n_aux"),
        ("relu_units", relu(m_aux=8, m_main=8, correlation=0.5, magnitude=1.0), "m_aux"),
        ("relu_units", relu(correlation=[0.1, 0.2]), "correlation"),
        ("relu_units", relu(correlation=[0.1, 0.2, 1.5, 0.3]), "correlation"),
        ("relu_units", relu(correlation=1.2), "correlation"),
        ("relu_units", relu(magnitude=[1.0, 1.0]), "magnitude"),
        ("relu_units", relu(magnitude=0.0), "magnitude"),
        ("relu_units", relu(m_aux=2, m_main=4, correlation=0.5), "m_main"),
        ("relu_units", relu(extra_key=True), "extra_key"),
    ],
)
def test_bad_params_raise_naming_field(tmp_path, family, params, field):
    with pytest.raises(pydantic.ValidationError) as info:
        tasks.validate_params(family, params)
    assert field in str(info.value)
    with pytest.raises(pydantic.ValidationError):
        tasks.build_task(family, params, 0, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing cached for invalid params


def test_overlap_message_mentions_values():
    with pytest.raises(pydantic.ValidationError, match=r"overlap \(6\) > k_main \(4\)"):
        tasks.validate_params("sparse_linear", sparse(k_main=4, overlap=6))


# ---------------------------------------------------------------- user families


def test_user_family_from_new_module(tmp_path, monkeypatch):
    mod_name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    family = f"const_{uuid.uuid4().hex[:8]}"
    src = f"""
        import numpy as np
        from pydantic import BaseModel, ConfigDict

        from tasks import register_family
        from tasks.sampling import teacher_rng, teacher_student_splits


        class Params(BaseModel):
            model_config = ConfigDict(extra="forbid")
            d: int = 3
            n: int = 5


        def teacher(params, seed):
            return {{"w": teacher_rng(seed).standard_normal(params.d)}}


        @register_family("{family}", Params, teacher=teacher)
        def generate(params, seed):
            w = teacher(params, seed)["w"]
            sizes = dict.fromkeys(("aux_train", "main_train", "aux_test", "main_test"), params.n)
            targets = dict.fromkeys(sizes, lambda x: x @ w)
            return teacher_student_splits(seed, params.d, sizes, targets)
        """
    (tmp_path / "pkgdir").mkdir()
    (tmp_path / "pkgdir" / f"{mod_name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgdir"))
    try:
        tasks.load_family_module(mod_name)
        assert family in tasks.list_families()
        dd = tasks.build_task(family, {"d": 4, "n": 7}, 0, cache_dir=tmp_path / "cache")
        x, y = arrays(dd, "main_test")
        w = tasks.task_teacher(family, {"d": 4, "n": 7}, 0)["w"]
        assert x.shape == (7, 4)
        np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
        with pytest.raises(pydantic.ValidationError, match="zzz"):
            tasks.validate_params(family, {"zzz": 1})
    finally:
        sys.modules.pop(mod_name, None)
        tasks.registry._REGISTRY.pop(family, None)


def test_package_modules_are_autodiscovered():
    pkg_dir = Path(tasks.__file__).parent
    modules = {p.stem for p in pkg_dir.glob("*.py") if p.stem != "__init__"}
    assert {f"tasks.{m}" for m in modules} <= set(sys.modules)
