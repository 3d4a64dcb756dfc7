"""Train groups of runs and gather their rows into one atomically written results store.

Executors: ``local`` trains the groups in this process, one after the other, or with
``jobs > 1`` in that many worker processes on this machine (each with its share of the CPU
threads); ``ray`` submits each group as a Ray task (``ray.init(address)``; a local instance when
no address is given) and gathers rows as tasks finish. Groups start longest first.

On a CPU, a full-batch step of a small ensemble is partly Python overhead on one core, so two
single-threaded workers on two cores outrun one two-threaded process (benchmarks/README.md).
Thread counts change the low-order bits of float sums: the same config, seed and ``jobs`` give
the same numbers on the same machine.

Whatever the executor, a group's rows are written the moment it finishes, so a process killed at
any point loses at most the groups in flight, and a restart trains only the runs that have no
row yet.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

import tasks
from mtl_lab.checkpoints import save_network
from mtl_lab.config import ComparisonConfig, ConfigError, flatten, member_knobs
from mtl_lab.data import TaskTensors
from mtl_lab.interrupts import as_interrupted
from mtl_lab.progress import tqdm
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.results import RESULTS_FILE, read_results, uniform_columns, write_results
from mtl_lab.sweeps.plan import RunSpec, group_runs, run_config

EXECUTORS = ("local", "ray")


def load_task(cfg: ComparisonConfig, seed: int, n_main: int) -> TaskTensors:
    """The task's tensors for one seed with n_main main-task training samples."""
    dd = tasks.build_task(cfg.task.family, cfg.task_params(n_main), seed,
                          cache_dir=cfg.task.cache_dir)
    return TaskTensors.from_dataset_dict(dd)


def run_row(spec: RunSpec, metrics: dict, wall: float, size: int) -> dict:
    """The flat results record of one run: identity, every config value, every metric."""
    cfg = spec.cfg
    return {
        "run_id": spec.run_id,
        "comparison": cfg.name,
        "regime": spec.regime,
        "regime_label": REGIME_SPECS[spec.regime].label,
        "seed": spec.seed,
        "n_main": spec.n_main,
        "task_params": json.dumps(cfg.task_params(spec.n_main), sort_keys=True),
        **{f"config.{k}": v for k, v in flatten(run_config(cfg)).items()},
        **{f"sweep.{axis}": name for axis, name in spec.labels},  # the sweep cases it is in
        **metrics,
        "wall_time": wall / size,
        "group_size": size,
        "device": "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        else "cpu",
    }


def train_group(group: Sequence[RunSpec], out_dir: str | Path,
                progress: bool | Callable[[str, int, int, dict], None] = False) -> list[dict]:
    """Train one batched group; save its checkpoints and wandb runs; return its rows.

    ``progress``: step bars of its own, or a sink that receives (phase, done, total, postfix).
    A group of deep-trunk runs (``model.kind`` resnet, vit) goes to
    :func:`mtl_lab.sweeps.deep.train_deep_group`: one Lightning fit per run.
    """
    if group[0].cfg.deep:
        from mtl_lab.sweeps.deep import train_deep_group

        return train_deep_group(group, out_dir, progress)
    from mtl_lab.analysis.callbacks import monitors_for
    from mtl_lab.analysis.summary import run_summary
    from mtl_lab.regimes import REGIME_FUNCTIONS, GroupContext, Member, PretrainStore
    from mtl_lab.tracking import group_loggers, log_run_to_wandb, quiet_lightning

    quiet_lightning()
    out_dir = Path(out_dir)
    cfg = group[0].cfg
    data: dict[tuple, TaskTensors] = {}
    members = []
    for spec in group:
        n_max = max(spec.cfg.n_main)
        key = (json.dumps(spec.cfg.task.params, sort_keys=True), spec.seed, n_max)
        if key not in data:
            data[key] = load_task(spec.cfg, spec.seed, n_max)
        members.append(Member(spec.run_id, spec.seed, data[key].with_main_prefix(spec.n_main),
                              **member_knobs(spec.cfg)))
    ctx = GroupContext(cfg, out_dir, progress, group_loggers(cfg, out_dir),
                       PretrainStore(out_dir / "checkpoints"), monitors_for(cfg.logging))
    t0 = time.perf_counter()
    results = REGIME_FUNCTIONS[group[0].regime](members, ctx)
    wall = time.perf_counter() - t0
    rows = []
    for spec, member, res in zip(group, members, results):
        metrics = {**res.metrics,
                   "null_loss_main": float(member.data.y["main_test"].double().pow(2).mean())}
        if res.network is not None:
            metrics.update(run_summary(res.network, member.data.x["main_test"]))
        row = run_row(spec, metrics, wall, len(group))
        if res.network is not None:
            save_network(res.network, out_dir / "checkpoints" / f"run-{spec.run_id}.pt",
                         run_id=spec.run_id, regime=spec.regime)
        row["wandb_id"] = log_run_to_wandb(spec.cfg, out_dir, row, res.history)
        rows.append(row)
    return rows


def preflight(out_dir: Path) -> pd.DataFrame:
    """Everything that can fail before compute: existing results and checkpoints must load."""
    from mtl_lab.modules.experiment import ModuleStore
    from mtl_lab.regimes import PretrainStore

    existing = read_results(out_dir)
    PretrainStore(out_dir / "checkpoints").check()
    ModuleStore(out_dir / "checkpoints").check()
    return existing


def check_executor(executor: str, jobs: int = 1) -> None:
    """Refuse an unknown executor or a bad ``jobs`` before anything is written or computed."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}: use one of {EXECUTORS}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number ≥ 1, got {jobs!r}")
    if executor == "ray" and jobs != 1:
        raise ConfigError("jobs is for the local executor; Ray runs one group per free CPU")


def execute(runs: Sequence[RunSpec], out_dir: str | Path, executor: str = "local",
            address: str | None = None, progress: bool = True, description: str = "runs",
            jobs: int = 1,
            ) -> pd.DataFrame:
    """Train every run without a row in ``out_dir``'s results; return the rows of ``runs``.

    Stopped by a signal (or Ctrl-C), it raises :class:`~mtl_lab.interrupts.Interrupted` whose
    ``detail`` says how many runs are saved and which groups were cut short; with ``jobs > 1``
    its worker processes are stopped first.
    """
    check_executor(executor, jobs)
    out_dir = Path(out_dir)
    existing = preflight(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = set(existing["run_id"]) if not existing.empty else set()
    groups = longest_first(group_runs(r for r in runs if r.run_id not in done))
    total = len({r.run_id for r in runs})
    table = [existing]
    saved = [total - sum(map(len, groups))]
    in_flight: set[str] = set()
    bar = tqdm(total=total, initial=saved[0], desc=description,
               unit="run", disable=not progress, dynamic_ncols=True)

    def gather(rows: list[dict]) -> None:
        table.append(pd.DataFrame(rows))
        write_results(out_dir, pd.concat(table, ignore_index=True))
        saved[0] += len(rows)
        bar.update(len(rows))

    try:
        if executor == "ray":
            _ray_groups(groups, out_dir, progress, address, gather, bar)
        elif jobs > 1:
            _pool_groups(groups, out_dir, jobs, progress, gather, bar, in_flight)
        else:
            _local_groups(groups, out_dir, progress, gather, bar, in_flight)
    except BaseException as err:
        stop = as_interrupted(err)
        if stop is None:
            raise
        cut = f"; cut short: {', '.join(sorted(in_flight))}" if in_flight else ""
        stop.detail = (f"{saved[0]} of {total} runs are saved in {out_dir / RESULTS_FILE}{cut}; "
                       f"rerun the same command to train the other {total - saved[0]}")
        raise stop from (None if stop is err else err)
    finally:
        bar.close()
    everything = uniform_columns(pd.concat(table, ignore_index=True))  # as stored
    ids = {r.run_id for r in runs}
    return everything[everything["run_id"].isin(ids)].reset_index(drop=True)


def group_cost(group: Sequence[RunSpec]) -> int:
    """A rough cost of a group: members × step budget × samples per step (pretraining aside);
    for deep trunks, :func:`mtl_lab.sweeps.deep.deep_group_cost`."""
    cfg = group[0].cfg
    if cfg.deep:
        from mtl_lab.sweeps.deep import deep_group_cost

        return deep_group_cost(group)
    params = cfg.task.params
    aux = params.get("n_aux", 0) if "aux" in REGIME_SPECS[group[0].regime].tasks else 0
    samples = max(r.n_main for r in group) + aux
    return len(group) * cfg.training.max_steps * max(samples, 1)


def longest_first(groups: list[list[RunSpec]]) -> list[list[RunSpec]]:
    """Groups by decreasing cost (stable), so that parallel workers finish close together."""
    return sorted(groups, key=group_cost, reverse=True)


def _describe(group: Sequence[RunSpec]) -> str:
    return f"{REGIME_SPECS[group[0].regime].label} seed {group[0].seed} ({len(group)} runs)"


def _local_groups(groups, out_dir: Path, progress: bool, gather: Callable, bar,
                  in_flight: set[str]) -> None:
    for group in groups:
        bar.set_postfix_str(_describe(group))
        in_flight.add(_describe(group))
        gather(train_group(group, out_dir, progress))
        in_flight.discard(_describe(group))


_WORKER_QUEUE = None  # a --jobs worker's progress queue, inherited when the worker starts


def _init_worker(threads: int, parent: int, queue) -> None:
    """A --jobs worker: its share of the cores, its progress queue, and an end with its parent.

    A watchdog thread ends the worker (status 1) as soon as its parent is gone, whatever killed
    the parent (SIGKILL included): an orphaned worker would otherwise finish its group, holding
    its memory, with nobody to receive the rows.
    """
    global _WORKER_QUEUE
    from mtl_lab.engine.threads import set_process_cap

    set_process_cap(threads)
    torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore, which a worker killed mid-group would
    # leak (the resource tracker then warns at exit): a worker's bars need only a thread lock
    tqdm.set_lock(threading.RLock())
    _WORKER_QUEUE = queue
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="exit-with-parent").start()


def _exit_with_parent(parent: int, every_s: float = 0.2) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


class QueueSink:
    """A picklable GDProgress sink: a worker's step progress for one group, sent to a queue
    (``queue``, e.g. a Ray queue, or the --jobs worker's inherited queue when None)."""

    def __init__(self, queue, group: str) -> None:
        self.queue = queue
        self.group = group

    def __call__(self, phase: str, done: int, total: int, postfix: dict) -> None:
        queue = self.queue if self.queue is not None else _WORKER_QUEUE
        queue.put((self.group, phase, done, total, postfix))


def _show_worker_progress(queue, slots: int, stop: threading.Event) -> None:
    """Per-group step bars under the runs bar, fed by the workers' QueueSinks, until ``stop``.

    Messages: (group, phase, done, total, postfix); (group, None, …) closes a group's bar. The
    loop polls ``stop`` rather than waiting for a sentinel: a worker killed mid-message must not
    leave it waiting forever.
    """
    bars: dict[str, tuple[tqdm, int]] = {}
    free = list(range(1, slots + 1))
    while not stop.is_set():
        try:
            message = queue.get(timeout=0.2)
        except Exception as err:  # queue.Empty, ray.util.queue.Empty (as a RayTaskError)
            if any(c.__name__ == "Empty" for c in type(err).__mro__):
                continue
            raise
        group, phase, done, total, postfix = message
        if phase is None:
            if group in bars:
                closed, position = bars.pop(group)
                closed.close()
                free.append(position)
            continue
        if group not in bars:
            position = free.pop(0) if free else slots + 1
            bars[group] = (tqdm(total=total, position=position, leave=False, unit="step",
                                dynamic_ncols=True), position)
        bar = bars[group][0]
        bar.set_description_str(f"{group} {phase}", refresh=False)
        bar.total, bar.n = total, done
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()
    for bar, _ in bars.values():
        bar.close()


@contextmanager
def _worker_bars(queue, slots: int, enabled: bool):
    """Show the workers' per-group step bars (from their QueueSinks) while the block runs."""
    stop = threading.Event()
    shown = threading.Thread(target=_show_worker_progress, args=(queue, slots, stop),
                             daemon=True)
    if enabled:
        shown.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            shown.join()


def _sink(queue, group: Sequence[RunSpec], enabled: bool) -> QueueSink | bool:
    return QueueSink(queue, _describe(group)) if enabled else False


def _finished(queue, group: Sequence[RunSpec], bar, enabled: bool) -> None:
    """A group's rows arrived: close its step bar, name it on the runs bar."""
    if enabled:
        queue.put((_describe(group), None, 0, 0, {}))
    bar.set_postfix_str(_describe(group))


def _pool_groups(groups, out_dir: Path, jobs: int, progress: bool, gather: Callable, bar,
                 in_flight: set[str]) -> None:
    """Train groups in ``jobs`` fresh worker processes sharing this machine's cores.

    The progress queue is handed to the workers when they start (no manager process); a failed
    group, Ctrl-C or a signal cancels the groups not started and stops the running workers.
    """
    from mtl_lab.engine.threads import usable_cores

    threads = max(1, usable_cores() // jobs)
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    queue = context.Queue()
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, os.getpid(), queue))
    try:
        with _worker_bars(queue, jobs, progress):
            pending = {pool.submit(train_group, list(g), str(out_dir), _sink(None, g, progress)):
                       g for g in groups}
            try:
                for future in as_completed(pending):
                    _finished(queue, pending[future], bar, progress)
                    gather(future.result())
            except BaseException:
                # the earliest-submitted unfinished groups are the ones in the workers
                running = [g for f, g in pending.items() if f.running()][:jobs]
                in_flight.update(_describe(g) for g in running)
                _stop_workers(pool)
                raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        queue.close()
        queue.cancel_join_thread()  # undelivered progress messages do not matter


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the groups not started and end the running workers now (SIGKILL: a worker inside
    a Lightning fit would otherwise treat SIGTERM as the end of one group and take the next;
    the groups cut short are trained again on the next run)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=10)
    pool.shutdown(wait=True, cancel_futures=True)  # its manager thread sees them gone and ends


def _ray_groups(groups, out_dir: Path, progress: bool, address, gather: Callable, bar) -> None:
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError as err:
        raise ConfigError("the ray executor needs Ray: pip install -e '.[ray]'") from err
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=1)(train_group)
        queue = Queue() if progress else None
        slots = int(ray.cluster_resources().get("CPU", 1))
        with _worker_bars(queue, slots, progress):
            pending = {remote.remote(list(g), str(out_dir), _sink(queue, g, progress)): g
                       for g in groups}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    _finished(queue, pending.pop(ref), bar, progress)
                    gather(ray.get(ref))
    finally:
        if started:
            ray.shutdown()
