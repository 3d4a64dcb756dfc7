"""Engine speed, measured in one run on one machine (ratios, not absolute times, are the point).

For the diagonal network (d = 1000, n = 1024) and the paper's ReLU trunk (d = 15, width 1000,
n = 1024) it prints, in steps/s of full-batch gradient descent:
  (a) a plain PyTorch loop on one run,
  (b) the lab's engine (Lightning recipe, batched GD loop) on one run,
  (c) the lab's engine on K runs of one seed of a sweep, as runs × steps/s,
  (d) the FLOP rate (c) reaches as a fraction of bare torch matrix products of the same shapes.
Targets: diagonal (b) ≥ 0.8 (a), (c) ≥ 6 (a), (d) ≥ 0.6; ReLU (b) ≥ 0.8 (a), (c) ≥ 1 (a).

With ``--device cuda`` the same figures on a GPU, in one run, after a warm-up (an idle GPU's
clocks ramp up over the first second), every clock read after ``torch.cuda.synchronize``: the
diagonal engine on K = 64 members, the ReLU engine on K = 16 and 64 members with the whole group
as one ensemble (the GPU's memory budget), and (d) against the device's measured matmul rate
and copy bandwidth. GPU targets (issue 10): diagonal K = 64 ≥ 10 000 steps/s per group, ReLU
K = 16 ≥ 3 000 steps/s per group and never slower than K plain loops one after the other.

Run: python benchmarks/engine.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from mtl_lab.analysis.callbacks import monitors_for
from mtl_lab.config import validate_config
from mtl_lab.data import make_term
from mtl_lab.engine.memory import keep_freed_memory
from mtl_lab.models import DiagonalNetwork, ReLUNetwork
from mtl_lab.regimes.base import GroupContext, fit
from mtl_lab.tracking import quiet_lightning

REPEATS = 3
DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> float:
    """Best (shortest) of REPEATS timings: the machine is shared, noise only ever adds time.
    The device finishes its queued work before every clock read."""
    best = float("inf")
    for _ in range(REPEATS):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def warm_up(seconds: float = 2.0) -> None:
    """Keep the device busy for a while so that its clocks have ramped up before any timing."""
    if DEVICE.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=DEVICE)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        _sync()


def copy_bandwidth(megabytes: int = 256, reps: int = 20) -> float:
    """Bytes per second moved by a device-to-device copy (read + write)."""
    src = torch.empty(megabytes * 2**18, device=DEVICE)  # float32: 4 bytes each
    dst = torch.empty_like(src)

    def loop():
        for _ in range(reps):
            dst.copy_(src)

    return 2 * src.numel() * 4 * reps / _timed(loop)


def plain_diagonal(x, y, steps: int, lr: float = 1e-3) -> float:
    """(a) The loop a researcher would write for one diagonal network."""
    d = x.shape[1]
    def loop():
        ps = [torch.full((d,), 0.1, requires_grad=True, device=DEVICE) for _ in range(4)]
        for _ in range(steps):
            wp, wm, vp, vm = ps
            loss = ((x @ (wp * vp - wm * vm) - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for p in ps:
                    p -= lr * p.grad
                    p.grad = None

    return steps / _timed(loop)


def plain_relu(x, y, width: int, steps: int, lr: float = 1e-3) -> float:
    """(a) The loop a researcher would write for one one-hidden-layer ReLU network."""
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(width, x.shape[1], generator=g) * (2 / x.shape[1]) ** 0.5).to(DEVICE)
    v0 = (torch.randn(width, generator=g) / width**0.5).to(DEVICE)

    def loop():
        w, v = w0.clone().requires_grad_(), v0.clone().requires_grad_()
        for _ in range(steps):
            loss = ((torch.relu(x @ w.T) @ v - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for p in (w, v):
                    p -= lr * p.grad
                    p.grad = None

    return steps / _timed(loop)


def engine(net, x_list, y_list, steps: int, lr: float = 1e-3, budget_mb: float | None = None,
           chunk: int = 500) -> float:
    """(b)/(c) The lab's path: Lightning recipe over the batched GD loop; runs × steps/s."""
    training = {"lr": lr, "max_steps": steps, "loss_threshold": 0.0, "steps_per_call": chunk,
                "divergence_limit": 1e30}
    if budget_mb is not None:
        training["max_ensemble_mb"] = budget_mb
    cfg = validate_config({"regimes": ["stl"], "seeds": [0], "n_main": [1],
                           "task": {"family": "sparse_linear",
                                    "params": {"d": 2, "k_aux": 1, "k_main": 1, "overlap": 0,
                                               "n_aux": 1}},
                           "training": training, "logging": {"csv": False, "progress": False},
                           "trainer": {"accelerator": DEVICE.type}})
    ctx = GroupContext(cfg, progress=False, monitors=monitors_for(cfg.logging))
    coef = torch.tensor([1.0 / len(y) for y in y_list])
    term = make_term("main", x_list, y_list, coef)
    k = net.ensemble_size
    lrs = torch.full((k,), lr)
    start = [p.detach().clone() for p in net.parameters()]

    def train() -> None:
        with torch.no_grad():  # every repeat trains from the same initial weights
            for p, p0 in zip(net.parameters(), start):
                p.copy_(p0)
        fit(net, [term], ["trunk", "heads"], lrs, cfg.training, ctx, "bench")

    seconds = _timed(train)
    return k * steps / seconds


def matmul_rate(shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], reps: int) -> float:
    """FLOP/s of bare torch matrix products (the arithmetic limit of one GD step); a pair of 3-D
    shapes (K, m, q) × (K, q, n) is a batched product."""
    mats = [(torch.randn(*a, device=DEVICE), torch.randn(*b, device=DEVICE)) for a, b in shapes]
    flops = sum(2 * math.prod(a) * b[-1] for a, b in shapes)
    for a, b in mats:
        a @ b

    def loop():
        for _ in range(reps):
            for a, b in mats:
                a @ b

    return flops * reps / _timed(loop)


def sweep_members(x, k_runs: int) -> tuple[list, list, list, list]:
    """K runs of one seed of a diagonal sweep: n_main, overlap, c and γ vary (shared inputs)."""
    import itertools

    g = torch.Generator().manual_seed(1)
    d = x.shape[1]
    aux = torch.randperm(d, generator=g)[:40]
    combos = list(itertools.product([128, 256, 512, 1024], [0, 20, 30, 40], [1.0, 0.1],
                                    [1e-3, 1e-2]))[:k_runs]
    xs, ys, cs, gammas = [], [], [], []
    for n, overlap, c, gamma in combos:
        beta = torch.zeros(d)
        new = torch.arange(d)[~torch.isin(torch.arange(d), aux)][: 20 - min(overlap, 20)]
        beta[torch.cat([aux[:overlap], new])[:20]] = 1 / 20**0.5
        xs.append(x[:n])
        ys.append(x[:n] @ beta)
        cs.append(c)
        gammas.append(gamma)
    return xs, ys, cs, gammas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    global DEVICE
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    DEVICE = torch.device(args.device)
    quiet_lightning()
    keep_freed_memory()  # the lab does this when it trains on CPU; the plain loop gets it too
    scale = 0.25 if args.quick else 1.0
    torch.manual_seed(0)
    where = (torch.cuda.get_device_name() if DEVICE.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch "
          f"{torch.__version__}, {where}")
    warm_up()
    if DEVICE.type == "cuda":
        print(f"copy bandwidth {copy_bandwidth() / 1e9:.0f} GB/s")

    # --- diagonal network, d = 1000, n = 1024 ---
    n, d, k = 1024, 1000, 64
    x = torch.randn(n, d)
    y = x[:, :20].sum(1) / 20**0.5
    steps = int(30000 * scale)  # long enough that Lightning's fixed start-up cost amortises
    a = plain_diagonal(x.to(DEVICE), y.to(DEVICE), steps)
    b = engine(DiagonalNetwork(d, ("main",), [0], alpha=0.1), [x], [y], steps, chunk=5000)
    xs, ys, cs, gammas = sweep_members(x, k)
    net = DiagonalNetwork(d, ("main",), list(range(k)), alpha=0.1,
                          head_init_scale=torch.tensor(gammas))
    net.rescale_trunk(torch.tensor(cs))
    c = engine(net, xs, ys, int(4000 * scale), chunk=2000)
    limit = matmul_rate([((n, d), (d, k)), ((d, n), (n, k))], int(200 * scale))
    # the engine evaluates each member on its own n_k samples (row bands): count that work
    mean_n = sum(len(y) for y in ys) / len(ys)
    d_frac = c * 4 * mean_n * d / limit
    print("\ndiagonal network, d=1000, n=1024")
    print(f"  (a) plain loop, 1 run           {a:10.0f} steps/s")
    print(f"  (b) engine, 1 run               {b:10.0f} steps/s   (b)/(a) = {b / a:5.2f}"
          "  target ≥ 0.8")
    print(f"  (c) engine, K={k} sweep runs     {c:10.0f} runs·steps/s (c)/(a) = {c / a:5.2f}"
          f"  target ≥ 6 (runs have n_main ≤ {n}, mean {mean_n:.0f}; (a) has n = {n})")
    print(f"  (d) FLOP rate of (c) / bare matmul = {d_frac:5.2f}  target ≥ 0.6 "
          f"({c * 4 * mean_n * d / 1e9:.1f} vs {limit / 1e9:.1f} GFLOP/s, counting each run's "
          "own samples)")

    # --- ReLU trunk, d = 15, width 1000, n = 1024 ---
    d, width, k = 15, 1000, 16
    x = torch.randn(n, d)
    y = torch.relu(x[:, :3]).sum(1)
    steps = int(3000 * scale)
    a = plain_relu(x.to(DEVICE), y.to(DEVICE), width, steps)
    b = engine(ReLUNetwork(d, width, 1, ("main",), [0]), [x], [y], steps, chunk=1000)
    print("\nReLU trunk, d=15, width=1000, n=1024")
    print(f"  (a) plain loop, 1 run           {a:10.0f} steps/s")
    print(f"  (b) engine, 1 run               {b:10.0f} steps/s   (b)/(a) = {b / a:5.2f}"
          "  target ≥ 0.8")
    # K runs of one seed: same inputs (n = 1024 each, the work of (a)), different teachers
    targets = [torch.relu(x[:, i % 5: i % 5 + 3]).sum(1) * (1 + i // 5) for i in range(k)]
    steps = int(500 * scale)
    if DEVICE.type == "cuda":
        relu_on_gpu(x, width, a, scale)
        return
    per_member_mb = 3 * 4 * n * width / 2**20  # the engine's activation estimate per member
    for budget in (None, 1.1 * per_member_mb, 2.1 * per_member_mb, 1e9):
        net = ReLUNetwork(d, width, 1, ("main",), list(range(k)))
        c = engine(net, [x] * k, targets, steps, budget_mb=budget, chunk=500)
        label = ("default budget" if budget is None else
                 f"{min(k, int(budget // per_member_mb))} member(s) at once")
        print(f"  (c) engine, K={k}, {label:22s} {c:8.0f} runs·steps/s "
              f"(c)/(a) = {c / a:5.2f}  target ≥ 1")
        if budget is None:
            c_default = c
    c = c_default
    flops_step = 2 * (2 * n * d * width) + 3 * (2 * n * width)
    # the closed form's products (engine/closed_form.py): the forward x·Wᵀ and the trunk
    # gradient xᵀ·(r v ∘ 1[z > 0]), batched over the K members
    limit = matmul_rate([((k, n, d), (k, d, width)), ((k, d, n), (k, n, width))],
                        int(20 * scale))
    print(f"  (d) arithmetic limit: {limit / 1e9:.1f} GFLOP/s; (c) reaches "
          f"{c * flops_step / 1e9:.1f} GFLOP/s = {c * flops_step / limit:4.2f} of it "
          "(ReLU + head are memory-bound)")
    memory_line(c, n, width)


def memory_line(c: float, n: int, width: int) -> None:
    """(d'): the activation traffic of (c) against the measured copy bandwidth. A ReLU step
    touches at least 4·n·H floats per member (write h, read it for the error, write and read
    the activity mask), so at small d it is bound by memory, not by the matmul rate."""
    traffic = c * 16 * n * width
    bandwidth = copy_bandwidth(64 if DEVICE.type == "cpu" else 256)
    print(f"  (d') activation traffic {traffic / 1e9:.1f} GB/s vs copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s = {traffic / bandwidth:4.2f} of it")


def relu_on_gpu(x, width: int, a: float, scale: float) -> None:
    """(c)/(d) for K = 16 and 64 ReLU members on the GPU, each group one ensemble (the device's
    memory budget), against K plain loops one after the other and the arithmetic limit."""
    n, d = x.shape
    for k in (16, 64):
        targets = [torch.relu(x[:, i % 5: i % 5 + 3]).sum(1) * (1 + i // 5) for i in range(k)]
        c = engine(ReLUNetwork(d, width, 1, ("main",), list(range(k))), [x] * k, targets,
                   int(2000 * scale), chunk=500)
        flops_step = 2 * (2 * n * d * width) + 3 * (2 * n * width)
        limit = matmul_rate([((k, n, d), (k, d, width)), ((k, d, n), (k, n, width))],
                            int(200 * scale))
        print(f"  (c) engine, K={k}, one ensemble  {c:8.0f} runs·steps/s = {c / k:6.0f} "
              f"steps/s per group; (c)/(a) = {c / a:5.2f} (≥ 1: never slower than K plain "
              f"loops); target ≥ 3000 steps/s per group at K=16")
        print(f"  (d) arithmetic limit {limit / 1e9:.0f} GFLOP/s; (c) reaches "
              f"{c * flops_step / 1e9:.0f} GFLOP/s = {c * flops_step / limit:4.2f} of it")
        memory_line(c, n, width)


if __name__ == "__main__":
    main()
