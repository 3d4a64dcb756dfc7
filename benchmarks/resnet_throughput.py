"""Training throughput (images/s) of ResNet-18 in the lab's Lightning module, at the paper's shapes.

The paper's deep-network test (SCIENCE.md §3): CIFAR-100 images (3×32×32), a 2-class main task
and a 98-class auxiliary task on one ResNet-18 trunk, SGD with momentum 0.9. This script trains
:class:`mtl_lab.modules.MultiTaskModule` with :class:`mtl_lab.models.resnet.ResNetTrunk` (the
CIFAR ResNet-18) through a plain ``lightning.Trainer`` on random images of that shape, every
batch mixing the two tasks (1/50 main, as in CIFAR-100), and reports images per second after
warm-up steps, per precision. The data sit in host memory and go through a ``DataLoader`` (pinned
memory and workers on a GPU), as a real dataset would.

Each precision trains ``--warmup`` steps untimed and then ``--steps`` timed ones (the clock reads
after a device synchronisation). A run that produces a non-finite loss fails the script (exit 1).

    python benchmarks/resnet_throughput.py --device cpu --steps 5 --batch 32   # ~1 min, 2 cores
    python benchmarks/resnet_throughput.py --device cuda                     # fp32 and bf16-mixed
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mtl_lab.models.resnet import ResNetTrunk
from mtl_lab.modules import MultiTaskModule, TaskSpec

for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

TASKS = (TaskSpec("main", "cross_entropy", 2), TaskSpec("aux", "cross_entropy", 98))


class RandomImages(Dataset):
    """``size`` random CIFAR-shaped images with task labels: 1 in 50 main (2 classes), else aux."""

    def __init__(self, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, 3, 32, 32, generator=g)
        self.task = (torch.arange(size) % 50 != 0).long()  # 0 = main, 1 = aux
        classes = torch.where(self.task == 0, 2, 98)
        self.y = (torch.rand(size, generator=g) * classes).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.task[i]


class Clock(L.Callback):
    """Synchronised wall time from the end of the warm-up steps to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.losses = warmup, None, []

    def _now(self, module: L.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        if batch_idx + 1 == self.warmup:
            self.start = self._now(module)

    def on_train_end(self, trainer, module) -> None:
        self.end = self._now(module)


def measure(device: str, precision: str, batch: int, steps: int, warmup: int,
            workers: int) -> tuple[float, float]:
    """(images/s, last loss) of one precision."""
    module = MultiTaskModule(ResNetTrunk(seed=0), tasks=TASKS, seed=0,
                             optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                             threads=None)
    data = RandomImages(batch * (steps + warmup))
    loader = DataLoader(data, batch_size=batch, shuffle=False, num_workers=workers,
                        pin_memory=device == "cuda", persistent_workers=workers > 0)
    clock = Clock(warmup)
    trainer = L.Trainer(accelerator=device, devices=1, precision=precision,
                        max_steps=steps + warmup, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    if not all(torch.isfinite(torch.tensor(clock.losses))):
        raise FloatingPointError(f"{precision}: non-finite training loss")
    return steps * batch / (clock.end - clock.start), clock.losses[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: 4 on cuda, 0 on cpu)")
    parser.add_argument("--precision", nargs="+", default=None,
                        help="Lightning precisions (default: 32-true and bf16-mixed on cuda, "
                             "32-true on cpu)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --device cpu")
    if min(args.batch, args.steps, args.warmup) < 1:
        raise SystemExit("--batch, --steps and --warmup must be >= 1")
    workers = args.workers if args.workers is not None else (4 if args.device == "cuda" else 0)
    precisions = args.precision or (["32-true", "bf16-mixed"] if args.device == "cuda"
                                    else ["32-true"])
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else f"{platform.machine()}, {torch.get_num_threads()} threads")
    params = sum(p.numel() for p in ResNetTrunk().parameters())
    print(f"ResNet-18 (CIFAR stem, {params / 1e6:.2f} M trunk parameters), batch {args.batch} of "
          f"3x32x32, heads 2 + 98 classes, SGD momentum 0.9; {args.device} ({name}); torch "
          f"{torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    ok = True
    for precision in precisions:
        try:
            rate, loss = measure(args.device, precision, args.batch, args.steps, args.warmup,
                                 workers)
            print(f"  {precision:>10}: {rate:,.0f} images/s (last loss {loss:.3f})", flush=True)
        except FloatingPointError as err:
            ok = False
            print(f"  [FAIL] {err}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
