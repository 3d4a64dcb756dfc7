"""Blocks of GD steps captured once as a CUDA graph and replayed, and when to re-capture.

Why graphs. On a GPU a full-batch step of a small ensemble is a few dozen short kernels, each
paying a launch (~5–10 µs of CPU time) that can exceed its run time: the step is launch-bound.
Within a chunk of ``steps_per_call`` steps the engine's shapes are fixed and it never
synchronises with the host (stopping, lr backoff and the step count are per-member tensor ops), so
a block of steps can be recorded once with ``torch.cuda.CUDAGraph`` and replayed: one launch per
block instead of one per kernel. ``torch.compile(mode="reduce-overhead")`` reaches the same through
a compiler; the explicit capture is chosen here because the step is already a fixed sequence of
tensor ops over in-place state, it needs no compilation time (which a sweep's many short groups
would pay again and again) and it keeps autograd's exact float32 arithmetic, so a graph replay
gives the eager step's numbers.

What must hold for a replay to be the same as eager steps: every tensor the step reads or writes
lives at a fixed address — parameters and state updated in place, inputs never replaced (the
engine's ``GDState`` updates and restarts are in place for that reason) — and a capture is
preceded by eager warm-up steps on a side stream (they are real steps and count as such).

When to re-capture. A captured block belongs to one stepped (sub-)ensemble. Compaction steps the
running members only, as a new, smaller sub-ensemble: each distinct sub-ensemble needs its own
capture. :func:`bucket` and :func:`compaction_due` keep that to a few: on a GPU the stepped
ensemble shrinks only when the running members fit a bucket (a power of two) at most half the
size of the one stepped now — stopped members in between cost a masked, zero-rate step — so an
ensemble of K members is captured at most ⌈log₂ K⌉ + 1 times. On the CPU nothing is captured and
compaction happens as soon as any stepped member has stopped (every stopped member saves work).

Example:
    >>> [bucket(m) for m in (1, 2, 3, 5, 64, 65)]
    [1, 2, 4, 8, 64, 128]
    >>> compaction_due(stepped=64, running=40, graphs=True), compaction_due(64, 32, True)
    (False, True)
    >>> compaction_due(stepped=64, running=63, graphs=False)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

WARMUP_STEPS = 3  # eager steps on a side stream before a capture (CUDA's requirement)


def bucket(members: int) -> int:
    """The smallest power of two ≥ ``members`` (≥ 1)."""
    if members < 1:
        raise ValueError(f"an ensemble has at least one member, got {members}")
    return 1 << (members - 1).bit_length()


def compaction_due(stepped: int, running: int, graphs: bool) -> bool:
    """Whether to build a new, smaller sub-ensemble of the ``running`` members now.

    Without graphs: whenever some stepped member has stopped. With graphs: only when the running
    members fit a bucket at most half the stepped ensemble's, so each capture is replayed long.
    """
    if running >= stepped:
        return False
    if not graphs:
        return True
    return bucket(running) <= bucket(stepped) // 2


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device (and a torch built with CUDA)."""
    return device.type == "cuda" and torch.cuda.is_available()


class StepBlocks:
    """Runs GD steps in blocks of ``block``: on a CUDA device one block is captured once as a
    graph and replayed; elsewhere the steps run eagerly. Counts steps, warm-ups and captures.

    ``step`` performs one GD step of a fixed ensemble in place (no host synchronisation, no
    tensor rebound to a new address).
    """

    def __init__(self, step: Callable[[], object], block: int, device: torch.device,
                 enabled: bool = True) -> None:
        if block < 1:
            raise ValueError(f"block must be ≥ 1, got {block}")
        self.step = step
        self.block = block
        self.device = device
        self.use_graph = enabled and graphs_available(device)
        self.graph = None
        self.captures = 0
        self.steps_done = 0

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.steps_done += WARMUP_STEPS
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.block):
                self.step()
        self.graph = graph
        self.captures += 1

    def next_piece(self) -> int:
        """How many steps to run next: one block, plus the warm-up while nothing is captured."""
        return self.block + (WARMUP_STEPS if self.use_graph and self.graph is None else 0)

    def run(self, steps: int) -> int:
        """Run exactly ``steps`` steps (warm-ups included); returns ``steps``."""
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {steps}")
        start = self.steps_done
        if self.use_graph and self.graph is None and steps >= WARMUP_STEPS + self.block:
            try:
                self._capture()
            except RuntimeError as err:  # an op that cannot be captured: run eagerly instead
                warnings.warn(f"CUDA graph capture failed, stepping eagerly: {err}",
                              RuntimeWarning, stacklevel=2)
                self.use_graph, self.graph = False, None
        left = steps - (self.steps_done - start)
        if self.graph is not None:
            for _ in range(left // self.block):
                self.graph.replay()
                self.steps_done += self.block
            left = steps - (self.steps_done - start)
        for _ in range(left):
            self.step()
            self.steps_done += 1
        return steps
