"""Layer-wise representation analysis of deep networks through forward hooks (SCIENCE.md §5).

Between a pretrained and a finetuned network (or any two networks with the same named layers),
over the same inputs — in the paper, the main task's test images — this computes per named layer:

* ``pr_a``, ``pr_b`` — participation ratio ``PR = (tr C)² / tr(C²)`` of each network's features,
  ``C = FᵀF / n``;
* ``ensd`` — ``ENSD(A, B) = PR_A · PR_B · tr(Ĉ_A Ĉ_B)``;
* ``cka`` — linear CKA between the two networks' features (unbiased HSIC).

The features of a layer are its output, flattened per sample; a convolutional output
``(n, C, H, W)`` is first averaged over its spatial positions (``(n, C)``: one feature per
channel, as the pooled features of a ResNet are) and a token sequence ``(n, T, D)`` over its
tokens (``(n, D)``), which keeps the feature count small enough to accumulate second moments.
Every measure is a :mod:`torchmetrics` Metric of :mod:`mtl_lab.analysis.representation`, updated
batch by batch, so a dataset never has to fit in memory and the result equals the full-batch
value up to float64 round-off.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> out = compare_layers(net, net, [torch.randn(32, 4)], layers=["1", "2"])
    >>> round(float(out["1"]["cka"]), 6), bool(torch.isclose(out["1"]["ensd"], out["1"]["pr_a"]))
    (1.0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mtl_lab.analysis.representation import ENSD, LinearCKA, ParticipationRatio

MEASURES = ("pr_a", "pr_b", "ensd", "cka")


def layer_features(output: Tensor | tuple) -> Tensor:
    """A layer's output as ``(n, p)`` features: spatial maps and token sequences averaged over
    positions, the rest flattened."""
    if isinstance(output, tuple | list):
        output = output[0]
    out = output.detach()
    if out.dim() == 4:  # (n, C, H, W) → (n, C)
        out = out.mean(dim=(2, 3))
    elif out.dim() == 3:  # (n, T, D) → (n, D)
        out = out.mean(dim=1)
    return out.flatten(1).double()


@contextmanager
def capture(model: nn.Module, layers: Sequence[str]):
    """Record the features of the named layers during the forward passes in the ``with`` block.

    Yields a dict ``{layer: Tensor | None}`` holding the latest forward pass's features.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        known = [n for n in modules if n][:40]
        raise KeyError(f"no layer named {missing} in {type(model).__name__}; layers: {known}")
    seen: dict[str, Tensor | None] = {name: None for name in layers}
    handles = []
    for name in layers:
        def hook(_module, _inputs, output, name=name) -> None:
            seen[name] = layer_features(output)
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _inputs(batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["x"]
    return batch[0]


@torch.no_grad()
def compare_layers(model_a: nn.Module, model_b: nn.Module, batches: Iterable,
                   layers: Sequence[str],
                   forward: Callable[[nn.Module, Tensor], object] | None = None,
                   device: torch.device | str | None = None) -> dict[str, dict[str, Tensor]]:
    """PR of each network, ENSD and linear CKA between them, per named layer (module docstring).

    ``batches``: tensors of inputs, ``(x, …)`` tuples or ``{"x": …}`` dicts (a DataLoader).
    ``forward(model, x)``: how to run a model (default ``model(x)``; for a multi-task module,
    e.g. ``lambda m, x: m(x, "main")``). Both models run in eval mode (BatchNorm uses its
    running statistics) and are put back in their previous mode.
    """
    run = forward or (lambda model, x: model(x))
    metrics = {name: {"pr_a": ParticipationRatio(), "pr_b": ParticipationRatio(),
                      "ensd": ENSD(), "cka": LinearCKA()} for name in layers}
    modes = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    try:
        with capture(model_a, layers) as fa, capture(model_b, layers) as fb:
            for batch in batches:
                x = _inputs(batch)
                if device is not None:
                    x = x.to(device)
                run(model_a, x)
                run(model_b, x)
                for name in layers:
                    a, b = fa[name].cpu(), fb[name].cpu()
                    m = metrics[name]
                    m["pr_a"].update(a)
                    m["pr_b"].update(b)
                    m["ensd"].update(a, b)
                    m["cka"].update(a, b)
    finally:
        model_a.train(modes[0])
        model_b.train(modes[1])
    return {name: {k: metric.compute() for k, metric in m.items()}
            for name, m in metrics.items()}


def layer_rows(measures: dict[str, dict[str, Tensor]], prefix: str = "layer") -> dict[str, float]:
    """Flat results-table columns ``<prefix>.<layer>.<measure>`` of :func:`compare_layers`."""
    return {f"{prefix}.{layer}.{k}": float(v) for layer, m in measures.items()
            for k, v in m.items()}
