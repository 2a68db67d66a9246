"""Loaders of real data sets on tiny fixtures written in their release layouts, and the MMoE generator.

NYUv2 and Cityscapes: the MTAN NumPy layout; Omniglot: its image folders (PNGs written with PIL).
Each checks shapes, dtypes, void handling, split sizes, determinism and the errors for bad layouts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dagir.datasets import dataset_info, dataset_tasks, load_dataset
from dagir.datasets.omniglot import task_name
from dagir.datasets.tabular import generate
from dagir.errors import UserError
from dagir.tasks import IGNORED_CLASS, VOID_LABEL, task_loss

HEIGHT, WIDTH = 12, 16
NYU_FOLDERS = ("image", "label", "depth", "normal")


# -- fixtures in the MTAN layout ------------------------------------------------------------------
def write_dense(root: Path, counts: dict[str, int], folders: tuple[str, ...], classes: int = 13,
                seed: int = 0) -> dict[tuple[str, str, int], np.ndarray]:
    """Write root/<split>/<folder>/<i>.npy as MTAN does (channels last, label -1 void, depth [H, W, 1])."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in counts.items():
        for folder in folders:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            arrays = {"image": rng.random((HEIGHT, WIDTH, 3)).astype(np.float32)}
            label = rng.integers(0, classes, (HEIGHT, WIDTH)).astype(np.float32)
            label[0, :] = -1.0  # the top row is void
            depth = rng.uniform(1.0, 5.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
            depth[:, : WIDTH // 2] = 0.0  # the left half has no depth
            normal = rng.normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[-1, :] = 0.0  # the bottom row has no normal
            arrays.update({"depth": depth, "normal": normal})
            for folder in folders:
                value = label if folder.startswith("label") else arrays[folder]
                np.save(root / split / folder / f"{index}.npy", value)
                written[(split, folder, index)] = value
    return written


@pytest.fixture(scope="module")
def nyuv2_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nyuv2")
    written = write_dense(root, {"train": 10, "val": 4}, NYU_FOLDERS)
    return root, written


def test_nyuv2_native_size_keeps_values_and_marks_void(nyuv2_root):
    root, written = nyuv2_root
    data = load_dataset("nyuv2", {"resize": [HEIGHT, WIDTH]}, root=str(root), val_split=0.2, seed=0)
    assert [len(split) for split in data.splits().values()] == [8, 2, 4]
    assert data.input_shape == (3, HEIGHT, WIDTH) == dataset_info("nyuv2").input_shape({"resize": [HEIGHT, WIDTH]})
    assert data.task_kinds == {"segmentation": "segmentation", "depth": "depth", "normals": "normals"}
    assert data.task_classes["segmentation"] == 13
    test = data.test
    assert test.inputs.dtype == torch.float32 and test.inputs.shape == (4, 3, HEIGHT, WIDTH)
    assert test.targets["segmentation"].dtype == torch.int64 and test.targets["segmentation"].shape == (4, HEIGHT, WIDTH)
    assert test.targets["depth"].shape == (4, 1, HEIGHT, WIDTH) and test.targets["normals"].shape == (4, 3, HEIGHT, WIDTH)
    for row in range(4):
        index = int(test.source_ids[row, 0]) - 10  # test ids continue after the train folder's
        assert np.array_equal(test.inputs[row].numpy(), np.moveaxis(written[("val", "image", index)], -1, 0))
        label = written[("val", "label", index)]
        assert np.array_equal(test.targets["segmentation"][row].numpy(),
                              np.where(label < 0, VOID_LABEL, label).astype(np.int64))
        assert np.array_equal(test.targets["depth"][row, 0].numpy(), written[("val", "depth", index)][..., 0])
        assert np.array_equal(test.targets["normals"][row].numpy(), np.moveaxis(written[("val", "normal", index)], -1, 0))
    assert bool((test.targets["segmentation"][:, 0] == VOID_LABEL).all())


def test_nyuv2_resize_never_blends_invalid_pixels(nyuv2_root):
    root, _ = nyuv2_root
    data = load_dataset("nyuv2", {"resize": [6, 8]}, root=str(root), val_split=0.2, seed=0)
    assert data.input_shape == (3, 6, 8) and data.train.inputs.shape == (8, 3, 6, 8)
    labels = data.train.targets["segmentation"]
    assert labels.shape == (8, 6, 8) and set(labels.unique().tolist()) <= set(range(13)) | {VOID_LABEL}
    depth = data.train.targets["depth"]
    assert bool((depth[..., :4] == 0).all())  # the invalid left half stays invalid
    assert float(depth[..., 4:].min()) >= 1.0  # valid depths are averages of valid depths only (>= 1)
    length = data.train.targets["normals"].norm(dim=1)
    valid = length > 0
    assert torch.allclose(length[valid], torch.ones(()), atol=1e-5)
    assert bool(valid[:, :5].all())


def test_nyuv2_splits_limit_and_determinism(nyuv2_root):
    root, _ = nyuv2_root
    options = {"resize": [6, 8], "limit": 3}
    first = load_dataset("nyuv2", options, root=str(root), val_split=0.2, seed=1)
    again = load_dataset("nyuv2", options, root=str(root), val_split=0.2, seed=1)
    assert [len(split) for split in first.splits().values()] == [3, 2, 3]
    assert torch.equal(first.train.inputs, again.train.inputs)
    full = [load_dataset("nyuv2", {"resize": [6, 8]}, root=str(root), val_split=0.2, seed=seed)
            for seed in (1, 2)]
    train, val = (set(split.source_ids[:, 0].tolist()) for split in (full[0].train, full[0].val))
    assert not train & val and train | val == set(range(10))
    assert set(full[0].test.source_ids[:, 0].tolist()) == set(range(10, 14))
    assert set(first.train.source_ids[:, 0].tolist()) <= train  # a limit takes a subset of the same split
    assert not torch.equal(full[0].val.source_ids, full[1].val.source_ids)


def test_nyuv2_default_options_match_the_registry(nyuv2_root):
    root, _ = nyuv2_root
    data = load_dataset("nyuv2", {}, root=str(root), val_split=0.2)
    assert data.input_shape == dataset_info("nyuv2").input_shape({}) == (3, 72, 96)
    assert data.train.inputs.shape[1:] == (3, 72, 96)
    assert (data.task_kinds, {"segmentation": 13}) == dataset_tasks("nyuv2")


def test_nyuv2_channels_first_files_are_read_too(tmp_path):
    root = tmp_path / "nyu"
    write_dense(root, {"train": 3, "val": 1}, NYU_FOLDERS)
    for folder in ("image", "normal", "depth"):
        for file in (root / "train" / folder).glob("*.npy"):
            np.save(file, np.moveaxis(np.load(file), -1, 0))
    data = load_dataset("nyuv2", {"resize": [HEIGHT, WIDTH]}, root=str(root), val_split=0.34)
    assert data.train.inputs.shape[1:] == (3, HEIGHT, WIDTH)
    assert data.train.targets["depth"].shape[1:] == (1, HEIGHT, WIDTH)


def broken(tmp_path: Path, damage) -> Path:
    root = tmp_path / "nyu"
    write_dense(root, {"train": 4, "val": 2}, NYU_FOLDERS)
    damage(root)
    return root


@pytest.mark.parametrize("damage, words", [
    (lambda root: [file.unlink() for file in (root / "train" / "normal").glob("*.npy")] and
     (root / "train" / "normal").rmdir(), ["missing folder", "train/normal"]),
    (lambda root: (root / "val" / "depth" / "1.npy").unlink(), ["val/depth holds 1 samples", "2", "unmatched: 1"]),
    (lambda root: np.save(root / "train" / "label" / "2.npy", np.full((HEIGHT, WIDTH), 13.0)),
     ["train/label/2.npy", "labels must be 0..12", "found 13"]),
    (lambda root: np.save(root / "train" / "image" / "0.npy", np.zeros((HEIGHT, WIDTH))),
     ["train/image/0.npy", "shape [12, 16]", "[H, W, 3] or [3, H, W]"]),
    (lambda root: np.save(root / "train" / "depth" / "3.npy", np.ones((HEIGHT, WIDTH + 1))),
     ["train/depth/3.npy", "12x17", "same height and width"]),
    (lambda root: (root / "train" / "image" / "notes.txt").write_text("x"), ["unexpected file", "notes.txt"]),
])
def test_nyuv2_bad_layouts_are_user_errors_naming_the_path(tmp_path, damage, words):
    root = broken(tmp_path, damage)
    with pytest.raises(UserError) as error:
        load_dataset("nyuv2", {"resize": [HEIGHT, WIDTH]}, root=str(root), val_split=0.5)
    for word in words:
        assert word in str(error.value)


def test_nyuv2_missing_root_or_split_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("nyuv2", root=str(tmp_path / "absent"))
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match=r"missing folder .*train/image"):
        load_dataset("nyuv2", root=str(tmp_path))


def test_nyuv2_native_size_is_required_without_resize(nyuv2_root):
    root, _ = nyuv2_root
    assert dataset_info("nyuv2").input_shape({"resize": None}) == (3, 288, 384)
    with pytest.raises(UserError, match="not the native 288x384; set data.options.resize"):
        load_dataset("nyuv2", {"resize": None}, root=str(root))
    with pytest.raises(UserError, match=r"resize.*\[height, width\]"):
        load_dataset("nyuv2", {"resize": [72]}, root=str(root))
    with pytest.raises(UserError, match=r"resize.*\[height, width\]"):
        dataset_info("nyuv2").input_shape({"resize": "small"})


# -- Cityscapes -----------------------------------------------------------------------------------
def test_cityscapes_classes_choose_the_label_folder(tmp_path):
    root = tmp_path / "cityscapes"
    write_dense(root, {"train": 5, "val": 2}, ("image", "label_19", "depth"), classes=19)
    data = load_dataset("cityscapes", {"classes": 19, "resize": [6, 8]}, root=str(root), val_split=0.2)
    assert [len(split) for split in data.splits().values()] == [4, 1, 2]
    assert data.task_kinds == {"segmentation": "segmentation", "depth": "depth"}
    assert data.task_classes == {"segmentation": 19, "depth": None}
    assert dataset_tasks("cityscapes", {"classes": 19}) == (data.task_kinds, {"segmentation": 19})
    assert data.input_shape == dataset_info("cityscapes").input_shape({"resize": [6, 8]})
    assert data.train.targets["depth"].shape == (4, 1, 6, 8)
    labels = set(data.train.targets["segmentation"].unique().tolist())
    assert labels <= set(range(19)) and max(labels) >= 13  # nearest-exact 12 -> 6 skips the void row 0
    assert dataset_info("cityscapes").input_shape({}) == (3, 64, 128)
    with pytest.raises(UserError, match=r"missing folder .*train/label_7"):
        load_dataset("cityscapes", {"classes": 7}, root=str(root))
    with pytest.raises(UserError, match="must be one of 7, 19"):
        load_dataset("cityscapes", {"classes": 8}, root=str(root))


# -- Omniglot -------------------------------------------------------------------------------------
OMNIGLOT = {"images_background": {"Alpha_(one)": 3, "Greek": 2}, "images_evaluation": {"Beta": 2}}
DRAWINGS = 5
SIDE = 20


def write_omniglot(root: Path, layout: dict[str, dict[str, int]] = OMNIGLOT) -> None:
    """Drawings black on white; pixel (alphabet, character) and (SIDE-1, drawing) are black strokes."""
    alphabet_index = 0
    for set_folder, alphabets in layout.items():
        for alphabet, characters in alphabets.items():
            for character in range(characters):
                folder = root / set_folder / alphabet / f"character{character + 1:02d}"
                folder.mkdir(parents=True)
                for drawing in range(DRAWINGS):
                    pixels = np.full((SIDE, SIDE), 255, dtype=np.uint8)
                    pixels[alphabet_index, character] = 0
                    pixels[SIDE - 1, drawing] = 0
                    Image.fromarray(pixels).convert("1").save(folder / f"{drawing:04d}_{character + 1:02d}.png")
            alphabet_index += 1


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("omniglot")
    write_omniglot(root)
    return root


def test_omniglot_one_task_per_alphabet_and_void_elsewhere(omniglot_root):
    data = load_dataset("omniglot", {"size": SIDE}, root=str(omniglot_root), val_split=0.2, seed=0)
    tasks = ["alpha_one", "greek", "beta"]
    assert list(data.task_kinds) == tasks and set(data.task_kinds.values()) == {"classification"}
    assert data.task_classes == {"alpha_one": 3, "greek": 2, "beta": 2}
    assert dataset_tasks("omniglot", {"size": SIDE}, root=str(omniglot_root)) == (data.task_kinds, data.task_classes)
    assert data.input_shape == (1, SIDE, SIDE) == dataset_info("omniglot").input_shape({"size": SIDE})
    # 7 characters of 5 drawings: 1 test, 1 validation, 3 training drawings each
    assert [len(split) for split in data.splits().values()] == [21, 7, 7]
    for split in data.splits().values():
        assert split.inputs.dtype == torch.float32 and split.inputs.shape[1:] == (1, SIDE, SIDE)
        stacked = torch.stack([split.targets[task] for task in tasks], dim=1)
        assert stacked.dtype == torch.int64
        assert bool(((stacked != IGNORED_CLASS).sum(dim=1) == 1).all())  # exactly one alphabet per sample
        for row in range(len(split)):
            owner = int((stacked[row] != IGNORED_CLASS).nonzero()[0])
            strokes = split.inputs[row, 0, owner].nonzero()[:, 0].tolist()
            assert strokes == [int(stacked[row, owner])]  # the drawn character is the label
            assert float(split.inputs[row, 0].sum()) == 2.0  # strokes 1, background 0
    ids = [set(split.source_ids[:, 0].tolist()) for split in data.splits().values()]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert set.union(*ids) == set(range(7 * DRAWINGS))


def test_omniglot_classification_loss_ignores_the_void_target(omniglot_root):
    data = load_dataset("omniglot", {"size": SIDE}, root=str(omniglot_root), val_split=0.2)
    target = data.train.targets["greek"]
    logits = torch.randn(len(target), 2, generator=torch.Generator().manual_seed(0))
    mine = target != IGNORED_CLASS
    assert 0 < int(mine.sum()) < len(target)
    assert torch.isclose(task_loss("classification", logits, target),
                         task_loss("classification", logits[mine], target[mine]))


def test_omniglot_split_is_per_character_and_deterministic(omniglot_root):
    def load(seed, **options):
        return load_dataset("omniglot", {"size": SIDE, **options}, root=str(omniglot_root), val_split=0.2, seed=seed)

    first, again, other = load(3), load(3), load(4)
    assert torch.equal(first.test.source_ids, again.test.source_ids)
    assert torch.equal(first.train.inputs, again.train.inputs)
    assert not torch.equal(first.test.source_ids, other.test.source_ids)
    for split in first.splits().values():  # every character of every alphabet is in every split
        for task, classes in first.task_classes.items():
            present = split.targets[task][split.targets[task] != IGNORED_CLASS]
            assert set(present.tolist()) == set(range(classes))
    # leaving out an alphabet moves no drawing of another between splits
    alone = load(3, alphabets=["Beta"])
    assert list(alone.task_kinds) == ["beta"]
    beta = first.test.targets["beta"] != IGNORED_CLASS
    assert torch.equal(alone.test.inputs, first.test.inputs[beta])


def test_omniglot_options_choose_sets_alphabets_and_size(omniglot_root):
    assert list(dataset_tasks("omniglot", {"alphabets": 1}, str(omniglot_root))[0]) == ["alpha_one"]
    assert list(dataset_tasks("omniglot", {"sets": ["evaluation"]}, str(omniglot_root))[0]) == ["beta"]
    assert list(dataset_tasks("omniglot", {"alphabets": ["greek", "Alpha_(one)"]}, str(omniglot_root))[0]) == \
        ["alpha_one", "greek"]
    data = load_dataset("omniglot", {"alphabets": 1}, root=str(omniglot_root), val_split=0.2)
    assert data.train.inputs.shape[1:] == (1, 28, 28) and float(data.train.inputs.max()) <= 1.0
    with pytest.raises(UserError, match="no alphabet 'Latin'.*found: Alpha_\\(one\\), Greek, Beta"):
        dataset_tasks("omniglot", {"alphabets": ["Latin"]}, str(omniglot_root))


def test_omniglot_task_names_are_spec_names():
    assert task_name("Blackfoot_(Canadian_Aboriginal_Syllabics)") == "blackfoot_canadian_aboriginal_syllabics"
    assert task_name("Ge_ez") == "ge_ez" and task_name("1st") == "alphabet_1st"


@pytest.mark.parametrize("layout, options, words", [
    ({}, {}, ["neither", "images_background", "images_evaluation"]),
    ({"images_background": {"Greek": 1}}, {"sets": ["evaluation"]}, ["missing folder", "images_evaluation"]),
    ({"images_background": {"Greek": 0}}, {}, ["alphabet folder", "Greek", "no character folders"]),
    ({"images_background": {"Greek": 1, "greek": 1}}, {}, ["both give the task name 'greek'"]),
])
def test_omniglot_bad_layouts_are_user_errors(tmp_path, layout, options, words):
    write_omniglot(tmp_path, layout)
    for set_folder, alphabets in layout.items():
        for alphabet in alphabets:
            (tmp_path / set_folder / alphabet).mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserError) as error:
        load_dataset("omniglot", options, root=str(tmp_path))
    for word in words:
        assert word in str(error.value)


def test_omniglot_character_without_drawings_and_unreadable_png(tmp_path):
    write_omniglot(tmp_path, {"images_background": {"Greek": 2}})
    empty = tmp_path / "images_background" / "Greek" / "character03"
    empty.mkdir()
    with pytest.raises(UserError, match="character03 holds no .png drawings"):
        load_dataset("omniglot", root=str(tmp_path))
    (empty / "0001_03.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read .*0001_03.png as an image"):
        load_dataset("omniglot", root=str(tmp_path))


# -- the MMoE synthetic tasks ---------------------------------------------------------------------
def test_mmoe_weights_and_linear_parts_have_the_asked_correlation():
    for correlation in (-0.5, 0.0, 0.5, 0.9):
        data = generate(20000, 16, correlation, generator_seed=1)
        weights_a, weights_b = data["w_a"], data["w_b"]
        cosine = weights_a @ weights_b / np.linalg.norm(weights_a) / np.linalg.norm(weights_b)
        assert abs(cosine - correlation) < 1e-9 and abs(np.linalg.norm(weights_a) - 1.0) < 1e-9
        linear = np.corrcoef(data["x"] @ weights_a, data["x"] @ weights_b)[0, 1]
        assert abs(linear - correlation) < 0.03


def test_mmoe_label_correlation_grows_with_the_option():
    realised = [np.corrcoef(*(lambda d: (d["a"], d["b"]))(generate(20000, 16, p, generator_seed=2)))[0, 1]
                for p in (-0.5, 0.0, 0.5, 0.9, 1.0)]
    assert all(low < high for low, high in zip(realised, realised[1:])), realised
    assert realised[-1] > 0.9999 and abs(realised[1]) < 0.05


def test_mmoe_loader_splits_and_seeds():
    options = {"correlation": 0.8, "dim": 12, "samples": 1000}
    data = load_dataset("mmoe_synthetic", options, val_split=0.1, seed=0)
    assert [len(split) for split in data.splits().values()] == [700, 100, 200]
    assert data.input_shape == (12,) == dataset_info("mmoe_synthetic").input_shape(options)
    assert data.task_kinds == {"a": "regression", "b": "regression"} == dataset_tasks("mmoe_synthetic")[0]
    assert data.train.inputs.dtype == torch.float32 and data.train.targets["a"].shape == (700, 1)
    resplit = load_dataset("mmoe_synthetic", options, val_split=0.1, seed=1)
    regenerated = load_dataset("mmoe_synthetic", {**options, "generator_seed": 1}, val_split=0.1, seed=0)
    rows = data.train.source_ids[:, 0]
    assert not torch.equal(rows, resplit.train.source_ids[:, 0])
    assert torch.equal(data.train.source_ids, regenerated.train.source_ids)
    assert not torch.equal(data.train.inputs, regenerated.train.inputs)
    with pytest.raises(UserError, match="correlation.*between -1.0 and 1.0"):
        load_dataset("mmoe_synthetic", {"correlation": 1.5})
