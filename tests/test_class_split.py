"""The class_split task family: split correctness, determinism, sources and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.class_split import ClassSplitError, ClassSplitParams, build_class_split, load_source


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def labels_of(split, name: str) -> np.ndarray:
    return np.asarray([int(v) for v in split.data[name][:]["y"]])


def source_labels(split, name: str) -> np.ndarray:
    """The source's class id of every sample of a split (undoing the renumbering)."""
    classes = split.main_classes if name.startswith("main") else split.aux_classes
    return np.asarray(classes)[labels_of(split, name)]


def test_main_and_aux_classes_are_disjoint_and_complete(digits):
    split = build_class_split({"n_main": 12}, seed=3, source_data=digits)
    assert set(split.main_classes).isdisjoint(split.aux_classes)
    assert sorted(split.main_classes + split.aux_classes) == list(range(10))
    for name in ("main_train", "main_test", "aux_train", "aux_test"):
        wanted = split.main_classes if name.startswith("main") else split.aux_classes
        assert set(source_labels(split, name)) == set(wanted), name
    n_classes = {"main": 2, "aux": 8}
    for name in split.data:
        assert set(labels_of(split, name)) == set(range(n_classes[name.split("_")[0]]))


def test_n_main_is_respected_and_stratified(digits):
    split = build_class_split({"n_main": 11}, seed=0, source_data=digits)
    counts = np.bincount(labels_of(split, "main_train"))
    assert counts.sum() == 11 and sorted(counts.tolist()) == [5, 6]
    fewer = build_class_split({"n_main": 4, "aux_classes": 3, "n_aux": 9}, seed=0,
                              source_data=digits)
    assert len(fewer.data["main_train"]) == 4 and len(fewer.aux_classes) == 3
    assert np.bincount(labels_of(fewer, "aux_train")).tolist() == [3, 3, 3]


def test_seeds_change_the_split_and_each_seed_is_deterministic(digits):
    a = build_class_split({"n_main": 10}, seed=0, source_data=digits)
    b = build_class_split({"n_main": 10}, seed=0, source_data=digits)
    assert a.main_classes == b.main_classes
    assert torch.equal(a.data["main_train"][:]["x"], b.data["main_train"][:]["x"])
    others = [build_class_split({"n_main": 10}, seed=s, source_data=digits) for s in (1, 2, 3)]
    assert any(o.main_classes != a.main_classes for o in others)
    assert any(not torch.equal(o.data["main_train"][:]["x"], a.data["main_train"][:]["x"])
               for o in others)


def test_test_sets_are_fixed_across_seeds_and_n_main(digits):
    """The held-out images of a class are the same whatever the seed or n_main."""
    def test_images(split, cls: int) -> torch.Tensor:
        labels = source_labels(split, "aux_test")
        return split.data["aux_test"][:]["x"][torch.from_numpy(labels == cls)]

    a = build_class_split({"n_main": 10}, seed=0, source_data=digits)
    b = build_class_split({"n_main": 40}, seed=5, source_data=digits)
    common = sorted(set(a.aux_classes) & set(b.aux_classes))
    for cls in common:
        assert torch.equal(test_images(a, cls), test_images(b, cls))
    # train and test never share an image (digits has no held-out split: a fixed 25 %)
    train = a.data["aux_train"][:]["x"].flatten(1)
    test = a.data["aux_test"][:]["x"].flatten(1)
    assert not (torch.cdist(train, test) == 0).any()


def test_inputs_are_normalised_with_the_training_split(digits):
    split = build_class_split({"n_main": 10}, seed=0, source_data=digits)
    x = torch.cat([split.data["aux_train"][:]["x"], split.data["main_train"][:]["x"]])
    assert split.input_shape == (1, 8, 8) and x.dtype == torch.float32
    # aux_train holds 8 of the 10 classes' training images: mean ≈ 0, std ≈ 1, not exactly
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_augmentation_changes_training_images_only(digits):
    plain = build_class_split({"n_main": 10}, seed=0, source_data=digits)
    aug = build_class_split({"n_main": 10, "augment": True}, seed=0, source_data=digits)
    assert not torch.equal(plain.data["aux_train"][:64]["x"], aug.data["aux_train"][:64]["x"])
    assert torch.equal(plain.data["aux_test"][:]["x"], aug.data["aux_test"][:]["x"])


def write_imagefolder(root, classes: int = 4, per_class: int = 6, labelled: bool = True):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{c}_{i}.png")
    return root


def test_a_local_imagefolder_is_a_source(tmp_path):
    root = write_imagefolder(tmp_path / "images")
    split = build_class_split({"source": str(root), "n_main": 4}, seed=0)
    assert split.input_shape == (3, 8, 8)
    assert len(split.aux_classes) == 2 and len(split.data["main_train"]) == 4
    assert split.data["main_train"][0]["x"].shape == (3, 8, 8)
    assert set(split.class_names) == {f"class_{c}" for c in range(4)}


def test_local_parquet_files_are_a_source(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    table = datasets.Dataset.from_dict(
        {"img": rng.integers(0, 256, size=(60, 1, 4, 4)).astype(np.uint8).tolist(),
         "fine_label": np.repeat(np.arange(5), 12).tolist()})
    table.to_parquet(str(tmp_path / "train.parquet"))
    split = build_class_split({"source": str(tmp_path / "train.parquet"), "n_main": 6}, seed=2)
    assert split.input_shape == (1, 4, 4) and len(split.aux_classes) == 3
    assert len(split.data["main_test"]) == 6  # 25 % of 12 images for each of 2 classes


@pytest.mark.parametrize("params, message", [
    ({"source": "/no/such/folder"}, "no such file or folder"),
    ({"main_classes": 6, "aux_classes": 5}, r"too few for 6 main \+ 5 auxiliary"),
    ({"main_classes": 10}, "10 classes: too few"),
    ({"n_main": 400}, "training images, 200 requested"),
])
def test_impossible_splits_are_clear_errors(digits, params, message):
    source = None if params.get("source") else digits
    with pytest.raises(ClassSplitError, match=message):
        build_class_split(params, seed=0, source_data=source)


def test_a_folder_without_labels_is_a_clear_error(tmp_path):
    root = write_imagefolder(tmp_path / "flat", labelled=False)
    with pytest.raises(ClassSplitError, match="no label column found"):
        build_class_split({"source": str(root)}, seed=0)


def test_parameters_are_validated_before_any_loading():
    with pytest.raises(ValueError, match="fewer than one image"):
        ClassSplitParams(n_main=1)
    with pytest.raises(ValueError, match="extra"):
        ClassSplitParams(n_mian=4)


def test_auxiliary_images_do_not_depend_on_n_main_and_main_images_nest(digits):
    """Pretraining is shared by every n_main of a seed, so its data must not move with n_main;
    a larger n_main adds images to a smaller one's."""
    small = build_class_split({"n_main": 6, "n_aux": 80}, seed=4, source_data=digits)
    large = build_class_split({"n_main": 30, "n_aux": 80}, seed=4, source_data=digits)
    assert torch.equal(small.data["aux_train"][:]["x"], large.data["aux_train"][:]["x"])
    big = large.data["main_train"][:]["x"].flatten(1)
    for image in small.data["main_train"][:]["x"].flatten(1):
        assert (big == image).all(dim=1).any()
