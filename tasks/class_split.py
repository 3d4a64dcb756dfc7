"""Class-split tasks from an image (or tabular) classification dataset (SCIENCE.md §3, real data).

The paper's deep-network test: per seed, the classes are permuted; the first ``main_classes``
(default 2) form the main task, the next ``aux_classes`` (default: all the others) the auxiliary
task. The main task trains on ``n_main`` images (a sweep axis), drawn per seed and stratified
over its classes; the auxiliary task on all its training images (or ``n_aux``). The test sets
are the source's fixed held-out images of the same classes. Labels are renumbered 0…k−1 within
each task, in the order of the permuted classes.

Sources (``source``):

* ``"digits"`` — scikit-learn's bundled handwritten digits (1 797 grey 8×8 images, 10 classes):
  the offline default, no network. Its held-out set is a fixed 25 % of each class.
* a local folder in the ``imagefolder`` layout (``<folder>/<class name>/<image file>``, or with
  ``train/`` and ``test/`` sub-folders), loaded with ``datasets.load_dataset("imagefolder")``;
* local ``.parquet`` or ``.arrow`` files (a file, or a folder holding them), with an image column
  and an integer (or ``ClassLabel``) label column;
* a Hugging Face hub name such as ``"cifar100"`` (needs the network; its ``test`` split is the
  held-out set).

Image and label columns are found by their feature types (``Image``, ``ClassLabel``) or the usual
names (``image``/``img``, ``label``/``fine_label``), or named by ``image_column`` and
``label_column``. A source without a held-out split is split once, per class, with a fixed seed
(independent of the task seed), so every seed sees the same test images.

Inputs are normalised per channel with the mean and standard deviation of the source's whole
training split (all classes: pretraining and finetuning then see the same inputs whatever the
split), as a ``with_transform`` on the ``datasets`` splits, which stay stored as images.
Augmentation (random crop with 4-pixel padding and horizontal flip) is off by default, as in the
paper, and applies to the training splits only.

Example:
    >>> split = build_class_split(ClassSplitParams(source="digits", n_main=10), seed=0)
    >>> sorted(split.data), len(split.data["main_train"]), split.input_shape
    (['aux_test', 'aux_train', 'main_test', 'main_train'], 10, (1, 8, 8))
    >>> split.data["main_train"][0]["x"].shape, len(split.main_classes), len(split.aux_classes)
    (torch.Size([1, 8, 8]), 2, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

if TYPE_CHECKING:
    import datasets

IMAGE_NAMES = ("image", "img", "pixel_values", "x")
LABEL_NAMES = ("label", "labels", "fine_label", "y")
HELD_OUT_NAMES = ("test", "validation")
HELD_OUT_SEED = 12345  # the fixed split of a source without a held-out split
HELD_OUT_FRACTION = 0.25


class ClassSplitError(ValueError):
    """A class-split task that cannot be built from its source (named in the message)."""


class ClassSplitParams(BaseModel):
    """Parameters of a class-split task (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    source: str = "digits"
    n_main: PositiveInt = 10
    main_classes: int = Field(2, ge=2)
    aux_classes: PositiveInt | None = None
    n_aux: PositiveInt | None = None
    image_column: str | None = None
    label_column: str | None = None
    augment: bool = False

    @model_validator(mode="after")
    def _enough_main_images(self) -> ClassSplitParams:
        if self.n_main < self.main_classes:
            raise ValueError(f"n_main = {self.n_main} gives fewer than one image to each of the "
                             f"{self.main_classes} main classes")
        return self


@dataclass(frozen=True)
class ClassSplit:
    """A built task: ``data`` (splits aux_train, main_train, aux_test, main_test; each sample a
    dict ``{"x": float tensor (C, H, W), "y": int}``), the source's class ids of each task, the
    normalisation statistics and the input shape."""

    data: datasets.DatasetDict
    main_classes: tuple[int, ...]
    aux_classes: tuple[int, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]


# ----------------------------------------------------------------------------- sources


def _digits() -> datasets.DatasetDict:
    import datasets
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0…16 → 0…255
    features = datasets.Features({
        "image": datasets.Array2D((8, 8), "uint8"),
        "label": datasets.ClassLabel(names=[str(int(n)) for n in bunch.target_names])})
    table = datasets.Dataset.from_dict({"image": images, "label": bunch.target.astype(np.int64)},
                                       features=features)
    return datasets.DatasetDict({"train": table})


def _local_files(path: Path) -> datasets.DatasetDict:
    import datasets

    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
    kinds = {p.suffix for p in files}
    if len(kinds) != 1:
        raise ClassSplitError(f"{path}: expected .parquet or .arrow files of one kind, found "
                              f"{sorted(kinds) or 'none'}")
    if kinds == {".arrow"}:
        parts = [datasets.Dataset.from_file(str(p)) for p in files]
        return datasets.DatasetDict({"train": datasets.concatenate_datasets(parts)})
    by_split: dict[str, list[str]] = {}
    for p in files:
        held_out = any(name in p.stem.lower() for name in HELD_OUT_NAMES)
        by_split.setdefault("test" if held_out else "train", []).append(str(p))
    return datasets.load_dataset("parquet", data_files=by_split)


def load_source(source: str) -> datasets.DatasetDict:
    """The source's splits (module docstring); a clear error for a missing one."""
    import datasets

    if source == "digits":
        return _digits()
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (
        ".parquet", ".arrow")
    if looks_local:
        if not path.exists():
            raise ClassSplitError(f"class_split source {source!r}: no such file or folder")
        if path.is_file() or any(path.rglob("*.parquet")) or any(path.rglob("*.arrow")):
            return _local_files(path)
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(path))
        except Exception as err:  # an empty folder, unreadable images
            raise ClassSplitError(f"class_split source {source!r}: cannot read it as an "
                                  f"imagefolder ({err})") from err
    try:
        return datasets.load_dataset(source)
    except Exception as err:
        raise ClassSplitError(f"class_split source {source!r}: not a local path, and the hub "
                              f"dataset could not be loaded ({type(err).__name__}: {err})") from err


def _column(table: datasets.Dataset, given: str | None, kind: str, source: str) -> str:
    import datasets

    if given is not None:
        if given not in table.column_names:
            raise ClassSplitError(f"class_split source {source!r}: no {kind} column {given!r}; "
                                  f"columns: {table.column_names}")
        return given
    wanted = datasets.Image if kind == "image" else datasets.ClassLabel
    typed = [n for n, f in table.features.items() if isinstance(f, wanted)]
    if kind == "label" and len(typed) > 1:  # e.g. CIFAR-100's coarse and fine labels
        typed = [n for n in typed if n in LABEL_NAMES] or typed
    named = [n for n in (IMAGE_NAMES if kind == "image" else LABEL_NAMES)
             if n in table.column_names]
    found = typed or named
    if not found:
        hint = (" (an imagefolder needs one sub-folder per class)" if kind == "label" else "")
        raise ClassSplitError(f"class_split source {source!r}: no {kind} column found{hint}; "
                              f"columns: {table.column_names}; name it with {kind}_column")
    return found[0]


def _as_array(image: Any) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1] (uint8 input) or as given (float input)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)  # HWC (PIL, arrays) → CHW
    elif a.ndim == 1:
        a = a[None, None]  # tabular rows: (1, 1, features)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


# ----------------------------------------------------------------------------- the split


def _held_out(dd: datasets.DatasetDict, label: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    train_name = "train" if "train" in dd else next(iter(dd))
    held = next((n for n in HELD_OUT_NAMES if n in dd and n != train_name), None)
    train = dd[train_name]
    if held is not None:
        return train, dd[held]
    labels = np.asarray(train[label])
    rng = np.random.default_rng(HELD_OUT_SEED)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.extend(idx[: int(round(HELD_OUT_FRACTION * len(idx)))].tolist())
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return train.select(np.flatnonzero(~is_test)), train.select(np.sort(test))


def _statistics(train: datasets.Dataset, image: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the whole training split, in chunks (no full copy)."""
    total = sq = None
    count = 0
    for start in range(0, len(train), 1024):
        batch = np.stack([_as_array(im) for im in train[start:start + 1024][image]])
        s, q = batch.sum(axis=(0, 2, 3), dtype=np.float64), (batch.astype(np.float64) ** 2).sum(
            axis=(0, 2, 3))
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _stratified(labels: np.ndarray, classes: list[int], n: int, rng: np.random.Generator,
                what: str) -> np.ndarray:
    """n indices over ``classes`` in equal parts (the first classes get the remainder): the first
    images of a random order of each class, so a smaller n picks a subset of a larger one."""
    base, extra = divmod(n, len(classes))
    picked = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        want = base + (i < extra)
        if want > len(pool):
            raise ClassSplitError(f"{what}: class {c} has {len(pool)} training images, {want} "
                                  "requested")
        picked.append(rng.permutation(pool)[:want])
    return np.sort(np.concatenate(picked))


def _transform(image: str, label: str, mapping: dict[int, int], mean: np.ndarray,
               std: np.ndarray, augment: bool, seed: int):
    import torch

    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    rng = np.random.default_rng(seed)

    def apply(batch: dict) -> dict:
        x = torch.stack([torch.from_numpy(_as_array(im)) for im in batch[image]])
        x = (x - m) / s
        if augment:
            pad = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
            h, w = x.shape[-2:]
            for k in range(len(x)):
                i, j = rng.integers(0, 9, size=2)
                crop = pad[k, :, i:i + h, j:j + w]
                x[k] = crop.flip(-1) if rng.random() < 0.5 else crop
        y = torch.tensor([mapping[int(v)] for v in batch[label]], dtype=torch.long)
        return {"x": x, "y": y}

    return apply


def build_class_split(params: ClassSplitParams | dict, seed: int,
                      source_data: datasets.DatasetDict | None = None) -> ClassSplit:
    """The class-split task of ``params`` for ``seed`` (module docstring).

    ``source_data``: the already loaded source (a sweep loads it once for all its seeds).
    Raises :class:`ClassSplitError` for a missing source, a source without labels, or too few
    classes or images for the split.
    """
    import datasets

    p = params if isinstance(params, ClassSplitParams) else ClassSplitParams(**params)
    dd = load_source(p.source) if source_data is None else source_data
    first = dd[next(iter(dd))]
    image = _column(first, p.image_column, "image", p.source)
    label = _column(first, p.label_column, "label", p.source)
    train, test = _held_out(dd, label)
    train_labels, test_labels = np.asarray(train[label]), np.asarray(test[label])
    classes = sorted(set(train_labels.tolist()))
    k_aux = p.aux_classes if p.aux_classes is not None else len(classes) - p.main_classes
    if k_aux < 1 or p.main_classes + k_aux > len(classes):
        raise ClassSplitError(f"class_split source {p.source!r} has {len(classes)} classes: "
                              f"too few for {p.main_classes} main + {max(k_aux, 1)} auxiliary")
    # three independent streams: the classes, the main images and the auxiliary images, so that
    # the auxiliary task (and its pretraining) is the same whatever n_main
    class_rng, main_rng, aux_rng = (np.random.default_rng(s)
                                    for s in np.random.SeedSequence(seed).spawn(3))
    order = [classes[i] for i in class_rng.permutation(len(classes))]
    main, aux = order[:p.main_classes], order[p.main_classes:p.main_classes + k_aux]
    main_train = _stratified(train_labels, main, p.n_main, main_rng, f"n_main = {p.n_main}")
    aux_pool = np.flatnonzero(np.isin(train_labels, aux))
    aux_train = (aux_pool if p.n_aux is None else
                 _stratified(train_labels, aux, p.n_aux, aux_rng, f"n_aux = {p.n_aux}"))
    mean, std = _statistics(train, image)
    feature = first.features[label]
    names = (tuple(feature.names) if isinstance(feature, datasets.ClassLabel)
             else tuple(str(c) for c in classes))
    splits = {}
    for name, table, index, task_classes in (
            ("main_train", train, main_train, main),
            ("aux_train", train, aux_train, aux),
            ("main_test", test, np.flatnonzero(np.isin(test_labels, main)), main),
            ("aux_test", test, np.flatnonzero(np.isin(test_labels, aux)), aux)):
        mapping = {c: i for i, c in enumerate(task_classes)}
        part = table.select(index.tolist())
        part.set_transform(_transform(image, label, mapping, mean, std,
                                      p.augment and name.endswith("train"), seed))
        splits[name] = part
    shape = tuple(int(v) for v in _as_array(first[0][image]).shape)
    return ClassSplit(data=datasets.DatasetDict(splits), main_classes=tuple(main),
                      aux_classes=tuple(aux), class_names=names,
                      mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                      input_shape=shape)
