"""The graph-capture bookkeeping that a CPU can test: bucket sizes, when a sub-ensemble is
re-captured, and that blocked stepping runs exactly the steps asked for."""

from __future__ import annotations

import pytest
import torch

import mtl_lab.engine.graphs as graphs_module
from mtl_lab.data import make_term
from mtl_lab.engine.gd import FullBatchGD, GDSettings
from mtl_lab.engine.graphs import StepBlocks, bucket, compaction_due
from mtl_lab.engine.objective import LossTerm
from mtl_lab.models import DiagonalNetwork


def test_buckets_are_powers_of_two_that_hold_the_members():
    for m in range(1, 300):
        b = bucket(m)
        assert b >= m and b & (b - 1) == 0 and (b == 1 or b // 2 < m)
    with pytest.raises(ValueError):
        bucket(0)


def test_with_graphs_a_shrinking_ensemble_is_recaptured_at_most_log2_k_times():
    """Members stop one by one: every compaction is a new capture."""
    for k in (1, 7, 16, 64, 100):
        stepped, captures = k, 1
        for running in range(k - 1, 0, -1):
            if compaction_due(stepped, running, graphs=True):
                stepped, captures = running, captures + 1
        assert captures <= (k - 1).bit_length() + 1
        assert stepped <= 2  # it still ends on a small ensemble


def test_without_graphs_every_stop_compacts():
    assert all(compaction_due(10, r, graphs=False) for r in range(1, 10))
    assert not compaction_due(10, 10, graphs=False)


@pytest.mark.parametrize("steps", [0, 1, 63, 64, 200])
def test_blocked_stepping_runs_exactly_the_steps_asked(steps):
    counter = torch.zeros(())

    def step():
        counter.add_(1)

    blocks = StepBlocks(step, block=64, device=torch.device("cpu"))
    assert blocks.run(steps) == steps
    assert int(counter) == steps == blocks.steps_done
    assert blocks.captures == 0  # nothing is captured on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_replayed_block_equals_eager_steps_on_the_gpu():
    x = torch.randn(256, 8, device="cuda")
    w_graph = torch.zeros(8, device="cuda")
    w_eager = w_graph.clone()

    def make_step(w):
        def step():
            grad = 2 * x.T @ (x @ w - 1.0) / x.shape[0]
            w.sub_(0.01 * grad)
        return step

    blocks = StepBlocks(make_step(w_graph), block=16, device=torch.device("cuda"))
    blocks.run(3 + 16 * 4 + 5)
    eager = make_step(w_eager)
    for _ in range(3 + 16 * 4 + 5):
        eager()
    assert blocks.captures == 1
    torch.testing.assert_close(w_graph, w_eager)


class _EagerGraph:
    """Stands in for a captured CUDA graph on the CPU: a replay runs the block eagerly."""

    def __init__(self, blocks: StepBlocks) -> None:
        self.blocks = blocks

    def replay(self) -> None:
        for _ in range(self.blocks.block):
            self.blocks.step()


def _fake_capture(self) -> None:
    for _ in range(graphs_module.WARMUP_STEPS):
        self.step()
    self.steps_done += graphs_module.WARMUP_STEPS
    self.graph = _EagerGraph(self)
    self.captures += 1


def _train(graphs: bool, monkeypatch) -> tuple[FullBatchGD, list[int]]:
    """Diagonal members with n = 4 … 32 samples that converge at different times."""
    captures: list[int] = []
    if graphs:
        monkeypatch.setattr(graphs_module, "graphs_available", lambda device: True)
        monkeypatch.setattr(StepBlocks, "_capture", _fake_capture)
        original = StepBlocks.__init__

        def remember(self, *args, **kwargs):
            original(self, *args, **kwargs)
            captures.append(id(self))

        monkeypatch.setattr(StepBlocks, "__init__", remember)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = x[:, 0] - 0.5 * x[:, 1]
    sizes = [32, 28, 24, 20, 16, 12, 8, 4]
    net = DiagonalNetwork(6, ("main",), list(range(len(sizes))), alpha=0.3).double()
    term = make_term("main", [x[:n] for n in sizes], [y[:n] for n in sizes],
                     torch.tensor([1.0 / n for n in sizes]))
    term = LossTerm(term.task, term.x.double(), term.y.double(), term.c.double())
    gd = FullBatchGD(net, [term], list(net.parameters()), torch.full((8,), 0.05,
                     dtype=torch.float64), GDSettings(4000, 1e-12))
    gd.run_until_done(chunk=256)
    return gd, captures


def test_graph_bookkeeping_replays_give_the_eager_results(monkeypatch):
    eager, _ = _train(False, monkeypatch)
    replayed, engines = _train(True, monkeypatch)
    for p, q in zip(eager.net.parameters(), replayed.net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert eager.state.steps.tolist() == replayed.state.steps.tolist()
    # the whole ensemble plus at most log2(8) + 1 re-captured sub-ensembles
    assert len(engines) <= 1 + (8 - 1).bit_length() + 1
