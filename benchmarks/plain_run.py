"""One run of the paper's diagonal-network sweep as a plain PyTorch script (one process per run,
as the paper's SLURM arrays did): the baseline that ``sweep_figure.py`` times.

python benchmarks/plain_run.py REGIME OVERLAP N_MAIN SEED BUDGET THRESHOLD LR [PT_LR [PT_BUDGET]]
  (pretraining uses PT_LR and PT_BUDGET, by default LR and BUDGET)
"""

from __future__ import annotations

import sys

import torch

import tasks

D, K_AUX, K_MAIN, N_AUX, N_TEST, ALPHA, GAMMA = 1000, 40, 40, 1024, 10000, 1e-3, 1e-3


def gd(params, loss_fn, budget: int, threshold: float, lr: float) -> None:
    """Full-batch GD until loss < threshold or the budget is spent; restart at lr/10 on blow-up."""
    start = [p.detach().clone() for p in params]
    while True:
        for _ in range(budget):
            loss = loss_fn()
            if not torch.isfinite(loss) or loss > 100:
                break
            if loss < threshold:
                return
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
        else:
            return
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        lr /= 10


def main() -> None:
    regime, overlap, n_main, seed, budget, threshold, lr = sys.argv[1:8]
    overlap, n_main, seed, budget = int(overlap), int(n_main), int(seed), int(budget)
    threshold, lr = float(threshold), float(lr)
    pt_lr = float(sys.argv[8]) if len(sys.argv) > 8 else lr
    pt_budget = int(float(sys.argv[9])) if len(sys.argv) > 9 else budget
    params = {"d": D, "k_aux": K_AUX, "k_main": K_MAIN, "overlap": overlap, "n_aux": N_AUX,
              "n_main": n_main, "n_test": N_TEST}
    dd = tasks.build_task("sparse_linear", params, seed).with_format("torch")
    xa, ya = dd["aux_train"][:]["x"], dd["aux_train"][:]["y"]
    xm, ym = dd["main_train"][:]["x"], dd["main_train"][:]["y"]
    w = [torch.full((D,), ALPHA, requires_grad=True) for _ in range(2)]
    heads = {t: [torch.full((D,), ALPHA, requires_grad=True) for _ in range(2)]
             for t in ("aux", "main")}

    def f(x, t):
        return x @ (w[0] * heads[t][0] - w[1] * heads[t][1])

    if regime == "stl":
        gd(w + heads["main"], lambda: ((f(xm, "main") - ym) ** 2).mean(), budget, threshold, lr)
    elif regime == "mtl":
        def joint():
            err = torch.cat([f(xa, "aux") - ya, f(xm, "main") - ym])
            return (err**2).mean()

        gd(w + heads["aux"] + heads["main"], joint, budget, threshold, lr)
    else:
        gd(w + heads["aux"], lambda: ((f(xa, "aux") - ya) ** 2).mean(), pt_budget, threshold,
           pt_lr)
        with torch.no_grad():
            for v in heads["main"]:
                v.fill_(GAMMA)
        trainable = heads["main"] if regime == "ptlp" else w + heads["main"]
        gd(trainable, lambda: ((f(xm, "main") - ym) ** 2).mean(), budget, threshold, lr)
    with torch.no_grad():
        xt, yt = dd["main_test"][:]["x"], dd["main_test"][:]["y"]
        print(float(((f(xt, "main") - yt) ** 2).mean()))


if __name__ == "__main__":
    main()
