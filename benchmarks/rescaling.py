"""Path-conditioned rescaling: the library's layer-block solver against the plain algorithm.

The plain algorithm (SCIENCE.md §6, as one would first write it): diag(G) once, then exact
coordinate descent on F(z) = n·log Σ_i g'_i − Σ_i log(g'_i / g_i) one neuron at a time, with the
index sets in(h) and out(h) of every neuron and g' updated in place. The library
(``mtl_lab.symmetry.path_conditioned``) minimises the same F by exact layer-block updates,
vectorised over the neurons of a layer. Both stop when a sweep's largest log-step is below tol.

For each architecture it prints sweeps, seconds and final F of both, the speed ratio
(plain / library) and the relative F difference, and ENorm's time for scale. Verdict (exit 1 when
it fails, or when nothing was compared): the library reaches the plain algorithm's F to 1e-8
relative (or lower) on every architecture and is not slower on the largest one.

    python benchmarks/rescaling.py            # widths up to 256 (~1 min on a 2-core CPU)
    python benchmarks/rescaling.py --full     # adds 15-1024^4 (several minutes)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch

from mtl_lab.symmetry import Architecture, enorm, path_conditioned, path_kernel_diagonal
from mtl_lab.symmetry.mlp import MLP


def neuron_index_sets(net: MLP) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """For each hidden layer, for each neuron: (flat indices of in(h), of out(h)) in the order
    of ``path_kernel_diagonal`` (W_l row-major, b_l, …, then V_t, c_t per head)."""
    offsets, at = {}, 0
    for layer, lin in enumerate(net.layers):
        offsets[("W", layer)] = at
        at += lin.weight.numel()
        if lin.bias is not None:
            offsets[("b", layer)] = at
            at += lin.bias.numel()
    for t, head in enumerate(net.heads.values()):
        offsets[("V", t)] = at
        at += head.weight.numel()
        if head.bias is not None:
            at += head.bias.numel()
    sets = []
    for layer, lin in enumerate(net.layers):
        fan_in, width = lin.in_features, lin.out_features
        rows = []
        for j in range(width):
            incoming = [offsets[("W", layer)] + j * fan_in + i for i in range(fan_in)]
            if lin.bias is not None:
                incoming.append(offsets[("b", layer)] + j)
            if layer + 1 < len(net.layers):
                nxt = net.layers[layer + 1].out_features
                outgoing = [offsets[("W", layer + 1)] + o * width + j for o in range(nxt)]
            else:
                outgoing = [offsets[("V", t)] + o * width + j
                            for t, head in enumerate(net.heads.values())
                            for o in range(head.out_features)]
            rows.append((torch.tensor(incoming), torch.tensor(outgoing)))
        sets.append(rows)
    return sets


def plain_path_conditioning(trunk, heads, tol: float = 1e-6, max_sweeps: int = 1000
                            ) -> tuple[int, float]:
    """Neuron-by-neuron exact coordinate descent; returns (sweeps, final F)."""
    net = MLP.of(trunk, heads)
    g0 = torch.cat([t.reshape(-1) for t in path_kernel_diagonal(trunk, heads)])
    g0 = g0 / g0.max()
    g = g0.clone()
    n = g.numel()
    sets = neuron_index_sets(net)
    total = float(g.sum())
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        step = 0.0
        for rows in sets:
            for incoming, outgoing in rows:
                p, m = float(g[outgoing].sum()), float(g[incoming].sum())
                if not (p > 0 and m > 0):
                    continue
                d = len(outgoing) - len(incoming)
                a = max(total - p - m, 0.0)
                # ∂/∂δ [n·log(a + p x + m/x) − d δ] = 0  ⇔  (n − d)p x² − d a x − (n + d)m = 0
                root = math.sqrt((d * a) ** 2 + 4.0 * (n - d) * (n + d) * p * m)
                x = ((d * a + root) / (2.0 * (n - d) * p) if d * a >= 0
                     else 2.0 * (n + d) * m / (root - d * a))
                g[outgoing] *= x
                g[incoming] /= x
                total = a + p * x + m / x
                step = max(step, abs(math.log(x)))
        total = float(g.sum())
        if step < tol:
            break
    return sweeps, n * math.log(total) - float((g / g0).log().sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add the 15-1024^4 trunk")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arch", nargs="*", help="architectures instead of the default ones")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = (list(args.arch) if args.arch is not None
             else ["15-64-64:1,10 bias", "15-1000:1,1", "15-256-256-256:1,10 bias"])
    if args.full:
        cases.append("15-1024-1024-1024-1024:1,10 bias")
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'architecture':36s} {'plain: sweeps, s':>16s} {'block: sweeps, s':>16s} "
          f"{'speed-up':>9s} {'ΔF/|F|':>9s} {'ENorm s':>8s}")
    ok, ratios = True, []
    for arch in cases:
        trunk, heads = Architecture.parse(arch).build(seed=0)
        budget = 3000 if args.full and arch == cases[-1] else 1000
        t_plain, t_block, t_enorm = (copy.deepcopy((trunk, heads)) for _ in range(3))
        start = time.perf_counter()
        sweeps_plain, f_plain = plain_path_conditioning(*t_plain, max_sweeps=budget)
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        record = path_conditioned(*t_block, max_sweeps=budget)
        block_s = time.perf_counter() - start
        start = time.perf_counter()
        enorm(*t_enorm)
        enorm_s = time.perf_counter() - start
        # the library's F uses diag(G) itself, the plain one diag(G) / max: they differ by n·log max
        diagonal = path_kernel_diagonal(trunk, heads)
        n, top = sum(t.numel() for t in diagonal), max(float(t.max()) for t in diagonal)
        f_block = record.values[-1] - n * math.log(top)
        diff = (f_block - f_plain) / abs(f_plain)
        ratio = plain_s / block_s
        ratios.append(ratio)
        ok &= diff <= 1e-8
        print(f"{arch:36s} {sweeps_plain:6d} / {plain_s:7.2f} {record.sweeps:6d} / "
              f"{block_s:7.3f} {ratio:8.1f}× {diff:9.1e} {enorm_s:8.3f}")
    if not ratios:
        print("FAIL: nothing compared")
        return 1
    ok &= ratios[-1] >= 1.0
    print(f"verdict: {'PASS' if ok else 'FAIL'} — block F within 1e-8 of (or below) the plain "
          f"algorithm's everywhere, speed-up on the largest {ratios[-1]:.1f}× (needs ≥ 1)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
