"""Rescaling symmetry, conservation laws and path-norms of the lab's networks (SCIENCE.md §6).

* Rescaling symmetry: for a hidden neuron j and λ > 0, (in_j, b_j, out_j) ← (λ·in_j, λ·b_j,
  out_j/λ) leaves the function unchanged (ReLU is positively homogeneous).
* Conservation laws: under gradient flow every hidden neuron keeps
  h_j = ‖in_j‖² + b_j² − ‖out_j‖² constant (for the last layer, out_j holds the weights of
  *every* head); for the diagonal net h₊,d = w₊,d² − Σ_t (v₊,dᵗ)² and likewise for the minus
  branch. GD with step η keeps them up to O(η²) per step; a weight-decay step θ ← (1 − ηλ)θ
  multiplies every h by exactly (1 − ηλ)². The laws only hold when *all* parameters train (a
  frozen trunk or head breaks them).
* Path-lifting Φ(θ): one coordinate per input→output path and per bias→output path, the product
  of the weights along it. ‖Φ‖_q is one forward pass of the network with |θ|^q in place of θ, no
  ReLUs, fed all-ones; it is invariant under rescaling.

Every function works on the whole ensemble: results carry a leading member dimension K.

Example:
    >>> from mtl_lab.models import ReLUNetwork
    >>> net = ReLUNetwork(3, 4, 2, ("aux", "main"), seeds=[0, 1], bias=True).double()
    >>> h0 = conservation_values(net)
    >>> sorted(h0), tuple(h0["layer1"].shape)
    (['layer0', 'layer1'], (2, 4))
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> before, norm = net(x, "main"), path_norm(net, q=1.0)
    >>> rescale_neurons(net, 0, torch.full((2, 4), 3.0, dtype=torch.float64))
    >>> torch.allclose(net(x, "main"), before), torch.allclose(path_norm(net, q=1.0), norm)
    (True, True)
    >>> conservation_drift(h0, conservation_values(net)).gt(0).all().item()  # h itself moved
    True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor

from mtl_lab.models.base import SharedTrunkNetwork
from mtl_lab.models.diagonal import DiagonalNetwork
from mtl_lab.models.relu import ReLUNetwork

__all__ = [
    "ConservationMonitor",
    "conservation_change",
    "conservation_drift",
    "conservation_values",
    "path_lifting",
    "path_norm",
    "path_norm_from_lifting",
    "rescale_neurons",
]


def _unsupported(net: object) -> TypeError:
    return TypeError(f"expected a ReLUNetwork or DiagonalNetwork, got {type(net).__name__}")


@torch.no_grad()
def conservation_values(net: SharedTrunkNetwork) -> dict[str, Tensor]:
    """The conserved quantities h of every hidden neuron, per member.

    ReLUNetwork: key ``f"layer{l}"`` → (K, width) with
    h_{l,j} = ‖W_l[j, :]‖² + b_l[j]² − ‖W_{l+1}[:, j]‖²  (l < L−1),
    h_{L−1,j} = ‖W_{L−1}[j, :]‖² + b_{L−1}[j]² − Σ_t (v_t[j])²  (all heads count).
    DiagonalNetwork: ``"plus"`` → h₊ = w₊² − Σ_t (v₊ᵗ)², ``"minus"`` → h₋ likewise, each (K, d).

    Example:
        >>> net = DiagonalNetwork(2, ("aux", "main"), seeds=[0], alpha=0.5)
        >>> conservation_values(net)["plus"]  # 0.25 − 2 · 0.25
        tensor([[-0.2500, -0.2500]])
    """
    if isinstance(net, ReLUNetwork):
        depth = len(net.weights)
        out: dict[str, Tensor] = {}
        for layer in range(depth):
            incoming = net.weights[layer].square().sum(-1)
            if net.biases:
                incoming = incoming + net.biases[layer].square()
            if layer + 1 < depth:
                outgoing = net.weights[layer + 1].square().sum(1)
            else:
                outgoing = sum(net.heads[t].square() for t in net.tasks)
            out[f"layer{layer}"] = incoming - outgoing
        return out
    if isinstance(net, DiagonalNetwork):
        plus = net.w_plus.square() - sum(net.v_plus[t].square() for t in net.tasks)
        minus = net.w_minus.square() - sum(net.v_minus[t].square() for t in net.tasks)
        return {"plus": plus, "minus": minus}
    raise _unsupported(net)


def _flat(h: Tensor | Mapping[str, Tensor]) -> Tensor:
    """All neurons of one member side by side: (K, N)."""
    if isinstance(h, Mapping):
        return torch.cat([h[key].reshape(h[key].shape[0], -1) for key in sorted(h)], dim=1)
    return h.reshape(h.shape[0], -1)


@torch.no_grad()
def conservation_drift(
    h0: Tensor | Mapping[str, Tensor], h1: Tensor | Mapping[str, Tensor], tiny: float = 1e-30
) -> Tensor:
    """Relative drift of the conserved quantities, per member: (K,).

    drift_k = max_j |h1_{k,j} − h0_{k,j}| / (max_j |h0_{k,j}| + tiny), the maxima running over
    every neuron (all layers when given the dicts of :func:`conservation_values`). Near a
    balanced start (h0 ≈ 0) the ratio is meaningless; compare absolute differences instead.

    Example:
        >>> conservation_drift(torch.tensor([[1.0, -2.0]]), torch.tensor([[1.1, -2.0]]))
        tensor([0.0500])
    """
    a, b = _flat(h0), _flat(h1).to(_flat(h0))
    return (b - a).abs().amax(dim=1) / (a.abs().amax(dim=1) + tiny)


def conservation_change(h0: Tensor | Mapping[str, Tensor], h1: Tensor | Mapping[str, Tensor]
                        ) -> Tensor:
    """Absolute drift of the conserved quantities, per member: max_j |h1_{k,j} − h0_{k,j}| (K,),
    in the units of h — squared weights. This is what results tables and monitors report, with
    :func:`relative_to_norm`: unlike :func:`conservation_drift` it stays meaningful at a small
    or balanced initialisation, where max|h0| is tiny.

    Example:
        >>> conservation_change(torch.tensor([[1.0, -2.0]]), torch.tensor([[1.1, -2.0]]))
        tensor([0.1000])
    """
    a, b = _flat(h0), _flat(h1).to(_flat(h0))
    return (b - a).abs().amax(dim=1)


@torch.no_grad()
def squared_norm(net: SharedTrunkNetwork) -> Tensor:
    """‖θ_k‖² of every member: the sum of its squared parameters, (K,)."""
    return sum(p.detach().double().pow(2).flatten(1).sum(1) for p in net.parameters())


def relative_to_norm(change: Tensor, *nets: SharedTrunkNetwork, tiny: float = 1e-30) -> Tensor:
    """``change`` (in squared-weight units) over the larger squared parameter norm of ``nets``
    (the start and the end of training): the share of the network's squared size that the
    conserved quantities moved by. h_j = ‖in_j‖² − ‖out_j‖² is a difference of squared norms,
    so 1e-3 means the laws held to a thousandth of the weights' squared scale."""
    scale = torch.stack([squared_norm(n).to(change) for n in nets]).amax(0)
    return change / (scale + tiny)


@torch.no_grad()
def rescale_neurons(net: ReLUNetwork, layer: int, lam: Tensor) -> None:
    """In place: neuron j of hidden ``layer`` of member k gets incoming weights and bias ×λ_{k,j}
    and outgoing weights (next layer, or every head after the last layer) ×1/λ_{k,j}.

    ``lam`` is (K, width), positive. The function of every head is unchanged; h_{l,j} is not.
    """
    if not isinstance(net, ReLUNetwork):
        raise TypeError(f"rescale_neurons needs a ReLUNetwork, got {type(net).__name__}")
    depth = len(net.weights)
    if not 0 <= layer < depth:
        raise ValueError(f"layer must be in [0, {depth}), got {layer}")
    w = net.weights[layer]
    lam = torch.as_tensor(lam).to(w)
    if lam.shape != w.shape[:2]:
        raise ValueError(f"lam must have shape {tuple(w.shape[:2])}, got {tuple(lam.shape)}")
    if not bool((lam > 0).all()):
        raise ValueError("rescaling factors must be positive (ReLU is only positively homogeneous)")
    w.mul_(lam.unsqueeze(-1))
    if net.biases:
        net.biases[layer].mul_(lam)
    if layer + 1 < depth:
        net.weights[layer + 1].div_(lam.unsqueeze(1))
    else:
        for task in net.tasks:
            net.heads[task].div_(lam)


def _heads(net: SharedTrunkNetwork, task: str | None) -> tuple[str, ...]:
    if task is None:
        return tuple(net.tasks)
    if task not in net.tasks:
        raise KeyError(f"unknown task {task!r}; the network has {net.tasks}")
    return (task,)


@torch.no_grad()
def path_norm(net: SharedTrunkNetwork, q: float = 1.0, task: str | None = None) -> Tensor:
    """ℓq path-norm ‖Φ(θ)‖_q per member, (K,), in one forward pass.

    ReLUNetwork: z_0 = 1 (all-ones input), z_l = |W_l|^q z_{l−1} + |b_l|^q (no ReLU), and
    ‖Φ_t‖_q^q = Σ_j |v_t[j]|^q z_L[j]; paths starting at a bias are included. DiagonalNetwork:
    ‖Φ_t‖_q^q = Σ_d |w₊,d v₊,dᵗ|^q + |w₋,d v₋,dᵗ|^q. With ``task=None`` the heads count as the
    outputs of one multi-output network: ‖Φ‖_q = (Σ_t ‖Φ_t‖_q^q)^{1/q} (for q = 1 the sum of the
    per-head path-norms).

    Example:
        >>> net = DiagonalNetwork(3, ("main",), seeds=[0], alpha=0.5)
        >>> path_norm(net, q=1.0)  # 3 coordinates × 2 branches × 0.25
        tensor([1.5000])
    """
    if q <= 0:
        raise ValueError(f"q must be positive, got {q}")
    tasks = _heads(net, task)
    if isinstance(net, ReLUNetwork):
        w0 = net.weights[0]
        z = torch.ones(w0.shape[0], w0.shape[2], dtype=w0.dtype, device=w0.device)
        for layer, w in enumerate(net.weights):
            z = torch.einsum("koi,ki->ko", w.abs().pow(q), z)
            if net.biases:
                z = z + net.biases[layer].abs().pow(q)
        total = sum((net.heads[t].abs().pow(q) * z).sum(-1) for t in tasks)
    elif isinstance(net, DiagonalNetwork):
        wp, wm = net.w_plus.abs().pow(q), net.w_minus.abs().pow(q)
        total = sum(
            (wp * net.v_plus[t].abs().pow(q) + wm * net.v_minus[t].abs().pow(q)).sum(-1)
            for t in tasks
        )
    else:
        raise _unsupported(net)
    return total.pow(1.0 / q)


@torch.no_grad()
def path_lifting(net: SharedTrunkNetwork, task: str | None, member: int = 0) -> Tensor:
    """The path-lifting Φ(θ) of one member, listed path by path (a 1-D tensor).

    ReLUNetwork of depth L, width H, input dim d: first the d·H^L input paths
    i → j_1 → … → j_L → head, Φ = W_0[j_1, i] W_1[j_2, j_1] ⋯ W_{L−1}[j_L, j_{L−1}] v_t[j_L],
    in lexicographic order of (i, j_1, …, j_L); then, for l = 0 … L−1, the H^{L−l} bias paths
    b_l[j_{l+1}] → j_{l+1} → … → j_L → head (Φ = b_l[j_{l+1}] W_{l+1}[j_{l+2}, j_{l+1}] ⋯ v_t[j_L])
    in lexicographic order of (j_{l+1}, …, j_L). DiagonalNetwork: (w₊∘v₊ᵗ, w₋∘v₋ᵗ) (the fixed
    sign of the minus branch is not a weight). ``task=None`` concatenates the heads in
    ``net.tasks`` order. The size grows as H^L: meant for small networks (tests, pictures).

    Example:
        >>> net = ReLUNetwork(2, 3, 2, ("main",), seeds=[0], bias=True)
        >>> path_lifting(net, "main").shape  # 2·3² input paths + 3² + 3 bias paths
        torch.Size([30])
    """
    tasks = _heads(net, task)
    if isinstance(net, DiagonalNetwork):
        parts = [
            torch.cat([net.w_plus[member] * net.v_plus[t][member],
                       net.w_minus[member] * net.v_minus[t][member]])
            for t in tasks
        ]
        return torch.cat(parts)
    if not isinstance(net, ReLUNetwork):
        raise _unsupported(net)
    weights = [w[member] for w in net.weights]
    depth = len(weights)
    parts = []
    for t in tasks:
        v = net.heads[t][member]
        # suffix[l]: products over the paths j_l → … → j_L → head, indexed [j_l, …, j_L]
        suffix = v
        suffixes = [v]
        for layer in range(depth - 1, 0, -1):
            w = weights[layer]  # (H_out, H_in): W[j_{l+1}, j_l]
            # new[j_l, j_{l+1}, …] = W[j_{l+1}, j_l] · suffix[j_{l+1}, …]
            suffix = w.T.reshape(*w.T.shape, *([1] * (suffix.dim() - 1))) * suffix.unsqueeze(0)
            suffixes.append(suffix)
        suffixes.reverse()  # suffixes[l] starts at hidden layer l (0-based: neuron j_{l+1})
        w0 = weights[0]
        inputs = w0.T.reshape(*w0.T.shape, *([1] * (suffixes[0].dim() - 1)))
        parts.append((inputs * suffixes[0].unsqueeze(0)).reshape(-1))
        if net.biases:
            for layer in range(depth):
                b = net.biases[layer][member]
                s = suffixes[layer]
                parts.append((b.reshape(-1, *([1] * (s.dim() - 1))) * s).reshape(-1))
    return torch.cat(parts)


def path_norm_from_lifting(phi: Tensor, q: float = 1.0) -> Tensor:
    """‖Φ‖_q = (Σ_p |Φ_p|^q)^{1/q} over the last dimension.

    Example:
        >>> path_norm_from_lifting(torch.tensor([3.0, -4.0]), q=2.0)
        tensor(5.)
    """
    if q <= 0:
        raise ValueError(f"q must be positive, got {q}")
    return phi.abs().pow(q).sum(-1).pow(1.0 / q)


class ConservationMonitor(L.Callback):
    """Logs ``conservation/max_drift`` — the largest absolute drift :func:`conservation_change`
    over all members trained so far — and ``conservation/max_drift_rel`` (the same relative to
    the squared parameter norm, :func:`relative_to_norm`) every ``every_n`` Lightning steps.

    With a :class:`~mtl_lab.engine.recipes.FullBatchRecipe` the values are read off the engines'
    networks (``pl_module.engines[i].net``: sub-ensembles when ``member_chunk`` splits the
    members, each compared to its own start); otherwise off ``pl_module.net`` (e.g. the
    minibatch recipe). Only the engine now training (and any finished since the last log point)
    is re-evaluated: an O(#parameters) reduction, no forward pass. ``drift`` holds the latest
    per-member values, members in their original order (final after training ends).
    """

    def __init__(self, every_n: int = 1, name: str = "conservation/max_drift") -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be ≥ 1, got {every_n}")
        self.every_n = every_n
        self.name = name
        self.h0: list[dict[str, Tensor]] = []
        self.starts: list[SharedTrunkNetwork] = []
        self.drifts: list[Tensor] = []
        self.relative: list[Tensor] = []
        self._calls = 0
        self._last = 0

    @staticmethod
    def _nets(pl_module: L.LightningModule) -> list[SharedTrunkNetwork]:
        engines = getattr(pl_module, "engines", None)
        if engines:
            return [e.net for e in engines]
        return [pl_module.net]

    @staticmethod
    def _current(pl_module: L.LightningModule, count: int) -> int:
        return min(int(getattr(pl_module, "current", 0)), count - 1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        nets = self._nets(pl_module)
        self.h0 = [conservation_values(n) for n in nets]
        self.starts = [copy.deepcopy(n) for n in nets]
        self.drifts = [torch.zeros(n.ensemble_size, device=next(n.parameters()).device)
                       for n in nets]
        self.relative = [d.clone() for d in self.drifts]
        self._calls = 0
        self._last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._calls += 1
        if self._calls % self.every_n:
            return
        self._update(pl_module)
        pl_module.log(self.name, torch.cat(self.drifts).max().float())
        pl_module.log(f"{self.name}_rel", torch.cat(self.relative).max().float())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(pl_module)  # ``drift`` is final even when the last step was not logged

    def _update(self, pl_module: L.LightningModule) -> None:
        """Re-evaluate the engines from the last one seen up to the one now training."""
        nets = self._nets(pl_module)
        now = self._current(pl_module, len(nets))
        for i in range(self._last, now + 1):
            self.drifts[i] = conservation_change(self.h0[i], conservation_values(nets[i]))
            self.relative[i] = relative_to_norm(self.drifts[i], self.starts[i], nets[i])
        self._last = now

    @property
    def drift(self) -> Tensor:
        """Latest drift of every member (zeros for members whose training has not started)."""
        return torch.cat(self.drifts) if self.drifts else torch.empty(0)
