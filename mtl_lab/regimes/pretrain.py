"""Pretraining on the auxiliary task, shared by PT+FT, PT+LP and the lazy references.

A pretrained network is keyed by a hash of everything that determines it (the auxiliary training
data, the model config, the pretraining recipe, the seed): every finetuning run with the same key
reuses one checkpoint, and none is ever trained twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from mtl_lab.checkpoints import load_network, read_checkpoint, save_network, stack_networks
from mtl_lab.data import counts, split_term
from mtl_lab.models import SharedTrunkNetwork
from mtl_lab.regimes.base import GroupContext, Member, build_network, fit


def pretrain_key(ctx: GroupContext, member: Member) -> str:
    """sha256 of the aux data bytes, model config, pretraining config and seed."""
    h = hashlib.sha256()
    cfg = ctx.cfg
    meta = {"model": cfg.model.model_dump(mode="json"),
            "pretraining": cfg.pretraining_or_training.model_dump(mode="json"),
            "seed": member.seed}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for t in (member.data.x["aux_train"], member.data.y["aux_train"]):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class PretrainStore:
    """Pretrained networks by key: in memory for this process, on disk under ``root``."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.memory: dict[str, tuple[SharedTrunkNetwork, dict]] = {}

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"pretrain-{key}.pt"

    def get(self, key: str) -> tuple[SharedTrunkNetwork, dict] | None:
        if key in self.memory:
            return self.memory[key]
        path = self.path(key)
        if path is not None and path.is_file():
            self.memory[key] = load_network(path)
            return self.memory[key]
        return None

    def put(self, key: str, net: SharedTrunkNetwork, summary: dict) -> None:
        self.memory[key] = (net, summary)
        if (path := self.path(key)) is not None:
            save_network(net, path, **summary)

    @contextmanager
    def locked(self, keys: Sequence[str]):
        """Hold an exclusive file lock per key (sorted order: no deadlock) while pretraining,
        so that processes sharing the folder (Ray workers) train each key once."""
        if self.root is None or not keys:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            for key in sorted(keys):
                handle = stack.enter_context(open(self.root / f".pretrain-{key}.lock", "w"))
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def check(self) -> None:
        """Validate every stored checkpoint (a corrupt one is an error before any compute)."""
        if self.root is not None and self.root.is_dir():
            for path in sorted(self.root.glob("pretrain-*.pt")):
                read_checkpoint(path)


def pretrained_for(members: Sequence[Member], ctx: GroupContext
                   ) -> tuple[SharedTrunkNetwork, list[dict]]:
    """An ensemble whose member k is the pretrained network for members[k] (trained if new)."""
    store: PretrainStore = ctx.pretrain_store or PretrainStore(None)
    keys = [pretrain_key(ctx, m) for m in members]
    with store.locked(sorted(set(keys))):  # concurrent workers never pretrain the same key twice
        _pretrain_missing(store, keys, members, ctx)
    found = [store.get(k) for k in keys]
    nets = [n for n, _ in found]
    summaries = [{"pretrain_key": key, **{f"pretrain_{k}": v for k, v in s.items()}}
                 for key, (_, s) in zip(keys, found)]
    return stack_networks(nets) if len(nets) > 1 else nets[0].select_members([0]), summaries


def _pretrain_missing(store: PretrainStore, keys: Sequence[str], members: Sequence[Member],
                      ctx: GroupContext) -> None:
    """Pretrain (as one batched ensemble) every key the store does not hold yet."""
    todo: dict[str, Member] = {}
    for key, m in zip(keys, members):
        if store.get(key) is None:
            todo.setdefault(key, m)
    if todo:
        new = list(todo.values())
        datas = [m.data for m in new]
        net = build_network(ctx.cfg.model, datas[0].in_dim, ("aux",), [m.seed for m in new])
        term = split_term(datas, "aux_train", "aux", 1.0 / counts(datas, "aux_train"))
        training = ctx.cfg.pretraining_or_training
        lr = torch.full((len(new),), training.lr)
        net, summaries, _ = fit(net, [term], ["trunk", "heads"], lr, training, ctx, "pretrain")
        for k, key in enumerate(todo):
            store.put(key, net.select_members([k]), summaries[k])
