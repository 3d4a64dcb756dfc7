"""How many CPU threads a fit uses: chosen from the work of one step and the cores free now.

torch's intra-op threads (OpenMP) wait for each other at the end of every parallel operation. When
another process holds one of the cores, a fit with as many threads as cores stalls at each of
those barriers until the scheduler gives the descheduled thread its turn: on the 2-core CI
machine, beside one busy process, a two-thread fit ran at 0.5–0.7× the speed of a one-thread fit
for every size measured (0.9 to 1 600 MFLOP per step), and the quickstart took 29 s instead of
12 s (benchmarks/README.md, ``contention.py``). On an idle machine a second thread only pays off
once a step has a few MFLOP of work (1.0× at 0.9 MFLOP, 1.3× at 7, 1.8× at 98).

So with ``trainer.threads: auto`` (the default) a CPU fit uses

    threads = min(⌊flops per step / MIN_FLOPS_PER_THREAD⌋, cap, cores − cores busy elsewhere), ≥ 1

re-evaluated at every chunk of GD steps, where *cap* is the share of this machine's cores given to
this process (all of them, or cores // jobs in a ``--jobs`` worker; never more than
``OMP_NUM_THREADS`` when that is set) and *cores busy elsewhere* counts the runnable threads of
other processes right now (``procs_running`` in ``/proc/stat`` minus this process's own running
threads; 0 where ``/proc`` is missing). A whole number in ``trainer.threads`` is used as given.
The thread count never changes a result on the machines measured (matrix products split work by
output blocks, not by the summed dimension); results are compared bit for bit across thread counts
in the tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch

MIN_FLOPS_PER_THREAD = 2e6
_PROCESS_CAP: int | None = None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_process_cap(threads: int | None) -> None:
    """Limit every later fit of this process to ``threads`` (a ``--jobs`` worker's core share)."""
    global _PROCESS_CAP
    _PROCESS_CAP = None if threads is None else max(1, int(threads))


def thread_cap() -> int:
    """The most threads a fit of this process may use: its core share, OMP_NUM_THREADS, cores."""
    cap = min(usable_cores(), _PROCESS_CAP or usable_cores())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        cap = min(cap, int(env))
    return max(1, cap)


def _state(stat_line: str) -> str:
    """The one-letter scheduler state of a /proc/<pid>/stat line (after the command name)."""
    return stat_line.rsplit(")", 1)[-1].split()[0]


def _running_now() -> int | None:
    """Runnable threads of other processes at this instant (None without /proc)."""
    try:
        text = Path("/proc/stat").read_text()
        running = next(int(line.split()[1]) for line in text.splitlines()
                       if line.startswith("procs_running"))
        own = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                own += _state((task / "stat").read_text()) == "R"
            except OSError:  # a thread that just ended
                continue
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(0, running - own)


def busy_elsewhere(samples: int = 5, gap_s: float = 0.002) -> int:
    """Cores busy with other processes: the median count of runnable foreign threads over a few
    samples — a process that merely flickers through the run queue is not counted, and one that
    spins is counted even if a single sample misses it (the minimum, used before, dropped a
    spinning process whenever one sample caught it off the run queue)."""
    seen = []
    for i in range(samples):
        now = _running_now()
        if now is None:
            return 0
        seen.append(now)
        if i + 1 < samples:
            time.sleep(gap_s)
    return sorted(seen)[(len(seen) - 1) // 2]


def auto_threads(flops_per_step: float) -> int:
    """The thread count for a step of ``flops_per_step`` on this machine now (see module doc)."""
    by_work = max(1, int(flops_per_step // MIN_FLOPS_PER_THREAD))
    if by_work == 1:
        return 1
    free = max(1, usable_cores() - busy_elsewhere())
    return max(1, min(by_work, thread_cap(), free))


def step_flops(params: Iterable[torch.Tensor], samples: int) -> float:
    """A step's work, roughly: forward and backward cost 6 flops per weight and sample."""
    return 6.0 * samples * sum(p.numel() for p in params)


class ThreadGovernor:
    """Sets torch's intra-op thread count for one fit and restores the previous one after it.

    ``setting`` is ``"auto"`` or a whole number (``trainer.threads``); with ``"auto"``,
    :meth:`update` re-chooses the count (called once per chunk of GD steps).

    Example:
        >>> before = torch.get_num_threads()
        >>> with ThreadGovernor(1, flops_per_step=1e9) as governor:
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """

    def __init__(self, setting: int | str, flops_per_step: float) -> None:
        if setting != "auto" and (not isinstance(setting, int) or isinstance(setting, bool)
                                  or setting < 1):
            raise ValueError(f"threads must be 'auto' or a whole number ≥ 1, got {setting!r}")
        self.setting = setting
        self.flops_per_step = flops_per_step
        self.previous: int | None = None
        self.chosen: list[int] = []

    def update(self) -> int:
        """Choose and apply the thread count; returns it."""
        threads = self.setting if self.setting != "auto" else auto_threads(self.flops_per_step)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if not self.chosen or self.chosen[-1] != threads:
            self.chosen.append(threads)
        return threads

    def __enter__(self) -> ThreadGovernor:
        self.previous = torch.get_num_threads()
        self.update()
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None and torch.get_num_threads() != self.previous:
            torch.set_num_threads(self.previous)


def _batch_size(batch) -> int:
    """The leading size of the first tensor found in a batch (tuple, list, mapping or tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(
        batch, list | tuple) else ()
    for item in items:
        size = _batch_size(item)
        if size:
            return size
    return 0


class ThreadsCallback(L.Callback):
    """The thread choice of this module for any Lightning fit on the CPU: a
    :class:`ThreadGovernor` sized by the model's parameters × the first batch's size, re-checked
    every ``every`` batches, the previous thread count restored when the fit ends.

    ``MultiTaskModule`` adds it by itself (``threads="auto"``); add it to a Trainer's callbacks
    for any other module.
    """

    def __init__(self, setting: int | str = "auto", every: int = 50) -> None:
        self.setting = setting
        self.every = max(1, int(every))
        self.governor: ThreadGovernor | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if module.device.type != "cpu":
            return
        if self.governor is None:
            flops = step_flops(module.parameters(), max(1, _batch_size(batch)))
            self.governor = ThreadGovernor(self.setting, flops).__enter__()
        elif batch_idx % self.every == 0:
            self.governor.update()

    def teardown(self, trainer, module, stage: str) -> None:
        if self.governor is not None:
            self.governor.__exit__(None, None, None)
            self.governor = None
