"""Each regime as a recipe: it trains, it starts where the science says it starts."""

import pytest
import torch

from mtl_lab.comparison import load_task
from mtl_lab.config import validate_config
from mtl_lab.data import counts, split_term
from mtl_lab.engine import member_losses
from mtl_lab.regimes import REGIME_FUNCTIONS, GroupContext, Member, PretrainStore, pretrain_key
from mtl_lab.regimes import base as regimes_base
from mtl_lab.regimes import pretrain as pretrain_module
from mtl_lab.regimes.gradient import finetune_start
from tests.conftest import tiny_raw


def _members(cfg, ns=(8,), seed=0, **kw):
    data = load_task(cfg, seed, max(ns))
    return [Member(f"r{n}", seed, data.with_main_prefix(n), cfg.training.lr, **kw) for n in ns]


@pytest.mark.parametrize("regime", ["stl", "mtl", "ptft", "ptlp"])
def test_each_regime_drives_train_loss_below_threshold(regime):
    cfg = validate_config(tiny_raw(**{"training.loss_threshold": 1e-3,
                                      "training.max_steps": 4000, "model.init_scale": 1.0}))
    ctx = GroupContext(cfg, progress=False, pretrain_store=PretrainStore(None))
    results = REGIME_FUNCTIONS[regime](_members(cfg, ns=(8, 16)), ctx)
    for res in results:
        assert res.metrics["status"] == "converged", res.metrics
        assert res.metrics["train_loss"] < 1e-3
        assert res.metrics["test_loss_main"] > 0


@pytest.mark.parametrize("regime", ["lp_ridge", "ntk_ridge"])
def test_lazy_references_interpolate_and_predict(regime):
    cfg = validate_config(tiny_raw(**{"training.loss_threshold": 1e-3, "model.init_scale": 1.0,
                                      "training.max_steps": 3000}))
    ctx = GroupContext(cfg, progress=False, pretrain_store=PretrainStore(None))
    (small, large) = REGIME_FUNCTIONS[regime](_members(cfg, ns=(8, 32)), ctx)
    assert small.metrics["status"] == "closed_form"
    assert large.metrics["test_loss_main"] < small.metrics["test_loss_main"]
    assert large.metrics["ridge_lambda"] in cfg.ridge.lambdas


def test_ptft_starts_from_pretrained_trunk_times_c_with_fresh_head():
    cfg = validate_config(tiny_raw(**{"training.max_steps": 300}))
    store = PretrainStore(None)
    ctx = GroupContext(cfg, progress=False, pretrain_store=store)
    members = _members(cfg, ns=(8, 32), rescale=0.25, head_init_scale=1e-3)
    members[1].rescale = 2.0
    net, _ = finetune_start(members, ctx)
    pretrained, _ = store.get(pretrain_key(ctx, members[0]))
    for p_ft, p_pt in zip(net.trunk_parameters(), pretrained.trunk_parameters()):
        torch.testing.assert_close(p_ft[0], 0.25 * p_pt[0])
        torch.testing.assert_close(p_ft[1], 2.0 * p_pt[0])
    torch.testing.assert_close(net.heads["aux"][0], pretrained.heads["aux"][0])
    head_rms = net.heads["main"].pow(2).mean().sqrt().item()
    assert head_rms == pytest.approx(1e-3 / net.width**0.5, rel=0.5)


def test_ptlp_trains_only_the_new_head():
    cfg = validate_config(tiny_raw(**{"training.max_steps": 300}))
    store = PretrainStore(None)
    ctx = GroupContext(cfg, progress=False, pretrain_store=store)
    members = _members(cfg)
    (res,) = REGIME_FUNCTIONS["ptlp"](members, ctx)
    pretrained, _ = store.get(pretrain_key(ctx, members[0]))
    for p_lp, p_pt in zip(res.network.trunk_parameters(), pretrained.trunk_parameters()):
        torch.testing.assert_close(p_lp, p_pt)


def test_mtl_really_shares_the_trunk():
    cfg = validate_config(tiny_raw(**{"training.max_steps": 200}))
    ctx = GroupContext(cfg, progress=False)
    members = _members(cfg)
    (res,) = REGIME_FUNCTIONS["mtl"](members, ctx)
    net = res.network
    assert net.tasks == ("aux", "main")
    datas = [m.data for m in members]
    trunk = list(net.trunk_parameters())
    for task in ("aux", "main"):  # each task's loss moves the one shared trunk
        term = split_term(datas, f"{task}_train", task, 1 / counts(datas, f"{task}_train"))
        grads = torch.autograd.grad(member_losses(net, [term]).sum(), trunk)
        assert all(g.abs().sum() > 0 for g in grads)
    # both heads read the same features
    x = datas[0].x["main_test"][:5]
    h = net.features(x)[0]
    torch.testing.assert_close(net(x, "aux")[0], h @ net.heads["aux"][0])


def test_pretraining_is_shared_and_never_repeated(tmp_path, monkeypatch):
    cfg = validate_config(tiny_raw(**{"training.max_steps": 200}))
    calls = []
    real_fit = regimes_base.fit

    def counting_fit(*args, **kwargs):
        calls.append(args[-1])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "fit", counting_fit)
    store = PretrainStore(tmp_path / "ckpt")
    ctx = GroupContext(cfg, progress=False, pretrain_store=store)
    REGIME_FUNCTIONS["ptft"](_members(cfg, ns=(8, 32)), ctx)
    REGIME_FUNCTIONS["ptlp"](_members(cfg, ns=(8, 32)), ctx)
    assert calls == ["pretrain"]
    assert len(list((tmp_path / "ckpt").glob("pretrain-*.pt"))) == 1
    fresh = GroupContext(cfg, progress=False, pretrain_store=PretrainStore(tmp_path / "ckpt"))
    REGIME_FUNCTIONS["lp_ridge"](_members(cfg), fresh)  # a new process finds it on disk
    assert calls == ["pretrain"]
    other = GroupContext(validate_config(tiny_raw(**{"training.max_steps": 200,
                                                     "model.init_scale": 0.3})),
                         progress=False, pretrain_store=PretrainStore(tmp_path / "ckpt"))
    REGIME_FUNCTIONS["ptft"](_members(other.cfg), other)  # a changed model retrains
    assert calls == ["pretrain", "pretrain"]


def test_pretrain_lock_serialises_workers_on_the_same_key(tmp_path):
    """Two holders of the same key's lock never overlap (processes sharing a folder, e.g. Ray
    workers, pretrain a key once: the second finds the checkpoint after waiting)."""
    import threading
    import time

    store = PretrainStore(tmp_path)
    events = []

    def worker(name):
        with PretrainStore(tmp_path).locked(["k1", "k0"]):
            events.append(f"{name}+")
            time.sleep(0.2)
            events.append(f"{name}-")

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    with store.locked([]):  # no keys, no files
        pass
    store.check()  # lock files are not mistaken for checkpoints


@pytest.mark.parametrize("method", ["enorm", "path_conditioned"])
def test_ptft_rescaling_preserves_the_pretrained_function_and_moves_the_laws(method):
    """finetune.rescaling: each member's pretrained trunk and heads are rescaled neuron by neuron
    before c — the auxiliary predictions stay (function-preserving), the conserved h_j change
    (ENorm: to ≈ 0), and c then multiplies the rescaled trunk."""
    from mtl_lab.analysis.symmetry import conservation_values

    cfg = validate_config(tiny_raw(**{"training.max_steps": 300, "model.bias": True,
                                      "finetune.rescaling": method}))
    store = PretrainStore(None)
    ctx = GroupContext(cfg, progress=False, pretrain_store=store)
    members = _members(cfg, ns=(8, 32), rescale=1.0, head_init_scale=1e-3)
    members[1].rescale = 0.5
    net, summaries = finetune_start(members, ctx)
    pretrained, _ = store.get(pretrain_key(ctx, members[0]))
    # the rows report h before the rescaling and where finetuning starts
    assert summaries[0]["h_abs_max_pretrained"] == summaries[1]["h_abs_max_pretrained"] > 0
    assert summaries[0]["h_abs_mean_start"] != summaries[0]["h_abs_mean_pretrained"]
    if method == "enorm":  # balanced (up to the fresh main head's γ² = 1e-6 scale)
        assert summaries[0]["h_abs_max_start"] < 1e-3 * summaries[0]["h_abs_max_pretrained"]
    x = members[0].data.x["aux_test"]
    before = pretrained(x, "aux")[0]
    torch.testing.assert_close(net(x, "aux")[0], before, rtol=1e-4, atol=1e-5)
    h_before = conservation_values(pretrained)
    h_after = conservation_values(net.select_members([0]))
    moved = max(float((h_after[k] - h_before[k]).abs().max()) for k in h_before)
    assert moved > 1e-3  # the rescaling changed the conserved quantities
    if method == "enorm":
        scale = max(float(v.abs().max()) for v in h_before.values())
        assert all(float(v.abs().max()) < 1e-4 * scale for v in h_after.values())
    for p_half, p_one in zip(net.trunk_parameters(), net.trunk_parameters()):
        torch.testing.assert_close(p_half[1], 0.5 * p_one[0])  # then c, per member


def test_rescaling_is_refused_off_relu_trunks_and_named_in_run_ids():
    from mtl_lab.config import ConfigError
    from mtl_lab.sweeps.plan import run_config

    diag = tiny_raw(**{"finetune.rescaling": "enorm"})
    diag["model"] = {"kind": "diagonal"}
    diag["task"] = {"family": "sparse_linear", "params": {"d": 20, "k_aux": 4, "k_main": 4,
                                                          "overlap": 2, "n_aux": 32}}
    with pytest.raises(ConfigError, match="finetune.rescaling: enorm rescales the neurons"):
        validate_config(diag)
    with pytest.raises(ConfigError, match="finetune.rescaling"):
        validate_config(tiny_raw(**{"finetune.rescaling": "sideways"}))
    plain = run_config(validate_config(tiny_raw()))
    assert "rescaling" not in plain["finetune"]  # run ids of existing runs unchanged
    assert run_config(validate_config(tiny_raw(**{"finetune.rescaling": "enorm"})))[
        "finetune"]["rescaling"] == "enorm"


def test_the_config_names_the_symmetry_rescalings():
    from mtl_lab.config import RESCALING_KINDS, RESCALING_METHODS
    from mtl_lab.symmetry import METHODS

    assert set(RESCALING_METHODS) == set(METHODS)
    assert set(RESCALING_KINDS) == set(METHODS) - {"none"}
