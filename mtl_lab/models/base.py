"""The one abstraction of the lab: a shared trunk feeding one linear readout head per task.

Every parameter carries a leading *ensemble* dimension K: member k of the ensemble is an
independent network (its own initialisation, data weights, learning rate). K = 1 is a single run.
Inputs are either shared by all members, shape (n, d), or per member, shape (K, n, d); outputs are
always (K, n).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def member_generator(seed: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for one ensemble member, so a member's draws never depend on K."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(salt))


def stack_members(
    seeds: Sequence[int], salt: int, draw: callable, device: torch.device | str = "cpu"
) -> Tensor:
    """Stack ``draw(generator)`` over members, each with its own seeded generator."""
    return torch.stack([draw(member_generator(s, salt)) for s in seeds]).to(device)


class SharedTrunkNetwork(nn.Module, ABC):
    """A trunk shared by all tasks and one linear head per task, for an ensemble of K members.

    Subclasses provide ``trunk_parameters``/``head_parameters``, ``forward(x, task)`` giving
    f_t(x) with shape (K, n), ``features(x)`` giving the last trunk representation (K, n, H),
    ``reset_head`` (a fresh head of scale γ per member) and ``rescale_trunk`` (θ_trunk ← c·θ_trunk).
    """

    tasks: tuple[str, ...]
    kind: str

    @property
    @abstractmethod
    def ensemble_size(self) -> int:
        """K, the number of stacked members."""

    @abstractmethod
    def forward(self, x: Tensor, task: str) -> Tensor:
        """f_task(x) for every member: x (n, d) or (K, n, d) -> (K, n)."""

    def linear_readout(self, task: str) -> Tensor | None:
        """βᵗ (K, d) when f_t(x) = ⟨βᵗ, x⟩ is linear in the input, else None.

        Networks that are linear in x (the diagonal network) expose βᵗ so that the engine can
        evaluate each sample on only the members that use it (see ``engine.objective``).
        """
        return None

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """The trunk's output representation h(x): (K, n, H)."""

    @abstractmethod
    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared trunk."""

    @abstractmethod
    def head_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        """Parameters of one head (or of all heads when ``task`` is None)."""

    @abstractmethod
    def reset_head(self, task: str, scales: Tensor, seeds: Sequence[int]) -> None:
        """Replace head ``task`` by a fresh one of initial scale ``scales[k]`` (γ) per member."""

    @torch.no_grad()
    def rescale_trunk(self, factors: Tensor) -> None:
        """Multiply every trunk parameter of member k by ``factors[k]`` (the PT+FT factor c)."""
        for p in self.trunk_parameters():
            p.mul_(factors.to(p).view(-1, *([1] * (p.dim() - 1))))

    @torch.no_grad()
    def select_members(self, index: Sequence[int] | Tensor) -> SharedTrunkNetwork:
        """A new ensemble whose member j is a copy of member ``index[j]`` of this one."""
        index = torch.as_tensor(index, dtype=torch.long)
        clone = copy.deepcopy(self)
        for name, p in clone.named_parameters():
            p.data = self.get_parameter(name).data.index_select(0, index.to(p.device)).clone()
        return clone

    def activations_per_sample(self) -> int:
        """Floats one member stores per sample in a forward pass (sizes ensemble chunks)."""
        return 1

    def add_head(self, task: str, scales: Tensor, seeds: Sequence[int]) -> None:
        """Add a head for a task the network has not seen (e.g. the main task after PT)."""
        if task not in self.tasks:
            self.tasks = (*self.tasks, task)
        self.reset_head(task, scales, seeds)

    def spec(self) -> dict:
        """Constructor arguments that rebuild this network's shapes (for checkpoints)."""
        return dict(self._spec, tasks=list(self.tasks), ensemble_size=self.ensemble_size)


def check_input(x: Tensor, k: int) -> None:
    """Raise a clear error when an input batch does not match the ensemble."""
    if x.dim() == 3 and x.shape[0] != k:
        raise ValueError(f"per-member input has {x.shape[0]} members, the ensemble has {k}")
    if x.dim() not in (2, 3):
        raise ValueError(f"inputs must be (n, d) or (K, n, d), got shape {tuple(x.shape)}")
