"""Your own data with mtl_lab's Lightning modules: multi-task pretraining, then finetuning.

What it shows, on scikit-learn's bundled 8×8 digit images (no download):

1. a ``LightningDataModule`` written as a user would (:class:`DigitsDataModule`): fixed-seed
   train/val/test splits, inputs standardised with the training split's statistics, and one
   sample per (image, task) as ``{"x", "y", "task"}`` dicts, shuffled so that every batch mixes
   the tasks;
2. :class:`mtl_lab.modules.MultiTaskModule` on three auxiliary tasks derived from the digit —
   ``parity`` (odd/even), ``large`` (digit ≥ 5) and ``mod3`` (digit mod 3) — on a shared ReLU
   MLP trunk given as a spec (so checkpoints rebuild it), with ``uncertainty`` task weighting
   (Kendall et al. 2018: one learned log-variance per task), trained by a plain
   ``lightning.Trainer`` and logged to Weights & Biases in offline mode (nothing is sent);
3. :meth:`mtl_lab.modules.FinetuneModule.from_pretrained` on the held-out 10-class ``digit`` task
   with only a few labelled training images per class: the pretrained trunk rescaled by
   c = 0.1 and a fresh head of scale γ = 1e-3, compared with c = 1 and with single-task learning
   (STL) from scratch on the same images;
4. saving the finetuned module with ``trainer.save_checkpoint`` and reloading it with
   ``FinetuneModule.load_from_checkpoint`` (no trunk to pass: it was given as a spec).

The auxiliary labels never show the digit itself, although the three of them together do
determine it (parity and mod 3 give the digit mod 6, and ``large`` tells 0–4 from 5–9), so the
pretrained trunk has learnt features the digit task can reuse.

Run it from the repository root (about 10 s on two CPU cores):

    pip install -e ".[examples]"
    python examples/digits_multitask.py                    # writes only to a temporary folder
    python examples/digits_multitask.py --out runs/digits  # keep the wandb runs and checkpoint

The offline wandb runs can be uploaded later with ``wandb sync <out>/wandb/offline-run-*``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from mtl_lab.modules import FinetuneModule, MultiTaskModule, TaskSpec

os.environ["WANDB_MODE"] = "offline"  # never touch the network
os.environ["WANDB_SILENT"] = "true"

# Lightning's banners ("GPU available: …", tips) and its hint that a small in-memory dataset
# does not need DataLoader workers would only drown the output.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# Lightning's own deprecation notice about torch's pytree API (nothing to act on here)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

# task name -> (number of classes, its label as a function of the digit 0–9)
TASKS = {
    "parity": (2, lambda digit: digit % 2),
    "large": (2, lambda digit: (digit >= 5).astype(np.int64)),
    "mod3": (3, lambda digit: digit % 3),
    "digit": (10, lambda digit: digit),
}
AUX_TASKS = ("parity", "large", "mod3")
HELD_OUT = "digit"


def spec(task: str) -> TaskSpec:
    """A classification task of :data:`TASKS` for the modules."""
    return TaskSpec(task, "cross_entropy", TASKS[task][0])


# --------------------------------------------------------------------------- data


class TaskSamples(Dataset):
    """One sample per (image, task): ``{"x": image (64,), "y": its label, "task": name}``."""

    def __init__(self, x: np.ndarray, digits: np.ndarray, tasks: list[str]) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.labels = {t: torch.as_tensor(TASKS[t][1](digits), dtype=torch.long) for t in tasks}
        self.rows = [(i, t) for t in tasks for i in range(len(digits))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict:
        i, task = self.rows[k]
        return {"x": self.x[i], "y": self.labels[task][i], "task": task}


class DigitsDataModule(L.LightningDataModule):
    """sklearn's digits (1797 images, 64 pixels) for the given tasks.

    Splits 60/20/20 %, stratified by digit, with a fixed seed; every task sees the same images.
    Inputs are standardised with the statistics of the whole training split (the same for every
    task, so a pretrained trunk and its finetuning see the same inputs).

    Args:
        tasks: task names of :data:`TASKS`; the default collate turns the dicts into batches with
            a list of task names, which the modules split by task.
        labelled_per_class: keep only the first k training images of each digit (the few-label
            regime); ``None`` keeps the whole training split. Validation and test stay whole.
        batch_size: training batch size (evaluation uses whole splits).
        seed: seed of the splits.
    """

    def __init__(self, tasks: list[str], labelled_per_class: int | None = None,
                 batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.labelled_per_class = labelled_per_class
        self.batch_size = batch_size
        self.seed = seed
        self.splits: dict[str, TaskSamples] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, digits = load_digits(return_X_y=True)
        x_train, x_rest, d_train, d_rest = train_test_split(
            x, digits, train_size=0.6, stratify=digits, random_state=self.seed)
        x_val, x_test, d_val, d_test = train_test_split(
            x_rest, d_rest, test_size=0.5, stratify=d_rest, random_state=self.seed)
        scaler = StandardScaler().fit(x_train)
        if self.labelled_per_class is not None:
            keep = np.concatenate([np.flatnonzero(d_train == d)[:self.labelled_per_class]
                                   for d in range(10)])
            x_train, d_train = x_train[np.sort(keep)], d_train[np.sort(keep)]
        for name, xs, ds in (("train", x_train, d_train), ("val", x_val, d_val),
                             ("test", x_test, d_test)):
            self.splits[name] = TaskSamples(scaler.transform(xs), ds, self.tasks)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=len(self.splits["val"]))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=len(self.splits["test"]))


# --------------------------------------------------------------------------- training


def fit_and_test(module: MultiTaskModule, data: DigitsDataModule, run: str, out: Path,
                 epochs: int, seed: int) -> tuple[L.Trainer, dict[str, float]]:
    """Train with a plain Lightning Trainer logged to an offline wandb run; test accuracy/task."""
    L.seed_everything(seed, verbose=False)  # every run sees its batches in the same order
    logger = WandbLogger(project="mtl-lab-digits", name=run, save_dir=str(out), offline=True)
    data.setup("fit")
    steps_per_epoch = -(-len(data.splits["train"]) // data.batch_size)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger,
                        default_root_dir=str(out), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=min(10, steps_per_epoch), num_sanity_val_steps=0,
                        deterministic=True)
    trainer.fit(module, datamodule=data)
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    logger.experiment.finish()  # closes the run: the next logger starts a new one
    return trainer, {t: metrics[f"test/{t}/accuracy"] for t in module.task_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the wandb runs and the checkpoint (default: a new "
                             "temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labelled-per-class", type=int, default=10,
                        help="labelled training images per digit for the held-out task")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=50)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="mtl-lab-digits-"))
    out.mkdir(parents=True, exist_ok=True)
    for key, folder in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb-cache"),
                        ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_DATA_DIR", "wandb-data")):
        os.environ.setdefault(key, str(out / folder))  # keep wandb's own files in `out` too
    wandb.setup()  # reads the WANDB_* settings now: WANDB_SILENT also quiets the loggers' runs
    L.seed_everything(args.seed, verbose=False)  # the heads' initial draws, the batch orders
    start = time.perf_counter()

    trunk = {"class_path": "mtl_lab.modules.trunks.MLPTrunk",
             "init_args": {"in_dim": 64, "width": 128, "depth": 2, "bias": True,
                           "seed": args.seed}}
    adam = {"name": "adam", "lr": 1e-3}

    # 1–2. multi-task pretraining on the three auxiliary tasks, uncertainty weighting
    aux_data = DigitsDataModule(list(AUX_TASKS), batch_size=64, seed=args.seed)
    pretrained = MultiTaskModule(trunk, [spec(t) for t in AUX_TASKS], weighting="uncertainty",
                                 weighting_options={"form": "classification"}, optimizer=adam,
                                 head_bias=True, seed=args.seed)
    _, aux_accuracy = fit_and_test(pretrained, aux_data, "pretrain-mtl-uncertainty", out,
                                   epochs=args.pretrain_epochs, seed=args.seed)
    n_aux = len(aux_data.splits["train"])
    print(f"Multi-task pretraining on {', '.join(AUX_TASKS)} "
          f"({n_aux} training samples, batches mixing the tasks)")
    print("uncertainty weighting: learned w_t = exp(-s_t), s_t the task's log-variance")
    print(f"{'task':<8} {'classes':>7} {'w_t':>6} {'test accuracy':>14}")
    weights = pretrained.weighting.weights()
    for t in AUX_TASKS:
        print(f"{t:<8} {TASKS[t][0]:>7} {weights[t]:>6.3f} {aux_accuracy[t]:>14.3f}")

    # 3. finetuning on the held-out task from few labels: c = 0.1, c = 1, and STL from scratch
    k = args.labelled_per_class
    few = DigitsDataModule([HELD_OUT], labelled_per_class=k, batch_size=25, seed=args.seed)
    runs: dict[str, tuple[str, MultiTaskModule]] = {
        "PT+FT c=0.1": ("finetune-c0.1", FinetuneModule.from_pretrained(
            pretrained, spec(HELD_OUT), rescale=0.1, head_init_scale=1e-3, train="all",
            optimizer=adam, seed=args.seed)),
        "PT+FT c=1": ("finetune-c1", FinetuneModule.from_pretrained(
            pretrained, spec(HELD_OUT), rescale=1.0, head_init_scale=1e-3, train="all",
            optimizer=adam, seed=args.seed)),
        "STL from scratch": ("stl", MultiTaskModule(
            trunk, [spec(HELD_OUT)], optimizer=adam, head_bias=True, seed=args.seed)),
    }
    accuracy: dict[str, float] = {}
    trainers: dict[str, L.Trainer] = {}
    for label, (run, module) in runs.items():
        trainers[label], found = fit_and_test(module, few, run, out, args.finetune_epochs,
                                              args.seed)
        accuracy[label] = found[HELD_OUT]
    n_test = len(few.splits["test"])
    print(f"\nHeld-out task {HELD_OUT!r}: {10 * k} labelled training images ({k} per class), "
          f"{n_test} test images")
    print(f"{'regime':<17} {'test accuracy':>14}")
    for label, acc in accuracy.items():
        print(f"{label:<17} {acc:>14.3f}")
    best = [label for label, acc in accuracy.items() if acc == max(accuracy.values())]
    print(f"highest test accuracy: {' and '.join(best)} (one seed, one split: a single "
          f"run, not a significance test)")

    # 4. checkpoint round trip of the finetuned module
    path = out / "finetune-c0.1.ckpt"
    finetuned = runs["PT+FT c=0.1"][1]
    trainers["PT+FT c=0.1"].save_checkpoint(path)
    reloaded = FinetuneModule.load_from_checkpoint(path)
    x_test = few.splits["test"].x
    with torch.no_grad():
        same = torch.equal(finetuned.eval()(x_test, HELD_OUT), reloaded.eval()(x_test, HELD_OUT))
    print(f"\nReloaded {path.name} with FinetuneModule.load_from_checkpoint: rescale c = "
          f"{reloaded.hparams['rescale']}, identical test predictions: {same}")
    print(f"Trained in {time.perf_counter() - start:.0f} s; offline wandb runs and the "
          f"checkpoint are in {out}")
    if not same:
        raise SystemExit("the reloaded module predicts differently")


if __name__ == "__main__":
    main()
